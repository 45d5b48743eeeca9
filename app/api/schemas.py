"""Request and response bodies, with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import to_json

from app.inference.predictor import ModelInfo, Prediction

# Hard ceiling for the schema; the server's own limit (NEXTWORD_MAX_TEXT_CHARS, lower by
# default) is checked in the route, since a schema cannot read settings.
TEXT_CEILING = 1_000_000
MAX_TOP_K = 100
MAX_PHRASE_WORDS = 5
# Phrases are found by a beam as wide as top_k: its cost grows with both.
MAX_PHRASE_TOP_K = 20
# A keyboard passes over a few words a keystroke: enough for the longest word's keystrokes.
MAX_EXCLUDED = 64


def model_field() -> Any:
    """/predict's and /score's `model`. A name is at most 64 characters (app.store.check_name):
    a longer one is refused before it is looked up or quoted back in an error."""
    return Field(
        default=None,
        max_length=64,
        description="Which served model answers (GET /models lists them); absent or null: "
        "the server's default model (NEXTWORD_MODEL_NAME).",
        examples=["ptb"],
    )


class PredictRequest(BaseModel):
    # strict: "5" is not a number and 1 is not true; extra fields are refused, not ignored.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            # With phrases, top_k is bounded lower (_phrases_bounded): said here too, so that
            # a client generated from the document knows it.
            "if": {"properties": {"phrase_words": {"minimum": 2}}, "required": ["phrase_words"]},
            "then": {"properties": {"top_k": {"maximum": MAX_PHRASE_TOP_K}}},
            "examples": [
                {"text": "the company said it expects ", "top_k": 5},
                {"text": "the company said it expects to report a loss for the third q"},
                {"text": "the company said it expects ", "top_k": 3, "phrase_words": 3},
            ],
        },
    )

    text: str = Field(
        max_length=TEXT_CEILING,
        description="The text so far. Ending in whitespace (or empty): the next word is "
        "predicted. Ending in part of a word (`the cat sat on the m`): that word is completed, "
        "with words that begin with it. A line break ends a sentence. At most "
        "NEXTWORD_MAX_TEXT_CHARS characters (10000 by default).",
        examples=["the company said it expects ", "the company said it ex"],
    )
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K, description="How many words to return.")
    include_special: bool = Field(
        default=False,
        description="Also offer the unknown-word and sentence-end tokens as next words.",
    )
    phrase_words: int = Field(
        default=1,
        ge=1,
        le=MAX_PHRASE_WORDS,
        description="Above 1, the answer also has the top_k most likely phrases of that many "
        f"words (then top_k is at most {MAX_PHRASE_TOP_K}).",
        examples=[3],
    )
    exclude: list[Annotated[str, Field(max_length=100)]] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDED,
        description="Words not to offer, e.g. those shown for this word that the user passed "
        "over (they keep their share of the probabilities).",
        examples=[["to", "a"]],
    )
    continuous_cache: bool = Field(
        default=True,
        description="Mix in the model's continuous cache over this text (when the model has "
        "one: /models shows its settings): words of the text that followed states like the "
        "present one gain probability. false: the model alone.",
    )
    model: str | None = model_field()

    @field_validator("top_k", mode="before")
    @classmethod
    def _integral_number(cls, value: Any) -> Any:
        # JSON has one number type: 5.0 is the integer 5 (JSON Schema says so too), while
        # strict mode would refuse it. "5", true and 5.5 are still refused.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("phrase_words", mode="before")
    @classmethod
    def _integral_phrase_words(cls, value: Any) -> Any:
        return cls._integral_number(value)

    @field_validator("phrase_words")
    @classmethod
    def _phrases_bounded(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("top_k", 1) > MAX_PHRASE_TOP_K:
            raise ValueError(f"with phrases, top_k must be at most {MAX_PHRASE_TOP_K}")
        return value


class WordProbability(BaseModel):
    word: str = Field(description="As the user would write it (capitalised where due)")
    probability: float = Field(
        description="The model's, over its vocabulary less the blocked words; for a "
        "completion, over the words that complete the fragment"
    )


class PhraseProbability(BaseModel):
    text: str = Field(description="Its words, as the user would write them, space-separated")
    probability: float = Field(description="The product of its words' probabilities")


class ModelRef(BaseModel):
    name: str
    version: int


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "next_word": "to",
                    "predictions": [
                        {"word": "to", "probability": 0.57105297},
                        {"word": "a", "probability": 0.08370892},
                        {"word": "the", "probability": 0.06800122},
                    ],
                    "tokens": ["<eos>", "the", "company", "said", "it", "expects"],
                    "unknown_words": [],
                    "model": {"name": "ptb", "version": 3},
                    "completing": None,
                    "phrases": [
                        {"text": "to be a", "probability": 0.0061685964},
                        {"text": "to continue to", "probability": 0.0060265185},
                        {"text": "to sell the", "probability": 0.0036112254},
                    ],
                },
                {
                    "next_word": "quarter",
                    "predictions": [
                        {"word": "quarter", "probability": 0.9998099},
                        {"word": "quarters", "probability": 0.00018325694},
                        {"word": "quarterly", "probability": 3.4237232e-6},
                    ],
                    "tokens": [
                        *["<eos>", "the", "company", "said", "it", "expects", "to", "report"],
                        *["a", "loss", "for", "the", "third"],
                    ],
                    "unknown_words": [],
                    "model": {"name": "ptb", "version": 3},
                    "completing": "q",
                },
            ]
        }
    )

    next_word: str | None = Field(
        description="The first prediction; null when no word completes the fragment"
    )
    predictions: list[WordProbability] = Field(description="Most likely first")
    tokens: list[str] = Field(
        description="The words the model read: <eos> first (a sentence start), unknown words "
        "as the unknown token"
    )
    unknown_words: list[str] = Field(
        description="Words of the text the model does not know (as standardised)"
    )
    model: ModelRef
    completing: str | None = Field(
        default=None,
        description="The word being typed (the end of `text`, as sent) when the predictions "
        "complete it; null when they are next words",
    )
    phrases: list[PhraseProbability] | None = Field(
        default=None, description="With phrase_words above 1: the most likely first"
    )


def predict_body(prediction: Prediction, model: ModelInfo, phrases: bool = False) -> bytes:
    """/predict's JSON body: a PredictResponse, written straight from the prediction (the
    values are the server's own, so they need no validation on the way out)."""
    body: dict[str, Any] = {
        "next_word": prediction.words[0] if prediction.words else None,
        "predictions": [
            {"word": word, "probability": probability}
            for word, probability in zip(prediction.words, prediction.probabilities, strict=True)
        ],
        "tokens": prediction.tokens,
        "unknown_words": prediction.unknown_words,
        "model": {"name": model.name, "version": model.version},
        "completing": prediction.completing,
    }
    if phrases:
        body["phrases"] = [
            {"text": " ".join(phrase.words), "probability": phrase.probability}
            for phrase in prediction.phrases
        ]
    return to_json(body)


class Status(BaseModel):
    status: str = Field(examples=["ok"])
    in_flight: int = Field(
        examples=[3], description="Requests being answered now (the probes not counted)"
    )
