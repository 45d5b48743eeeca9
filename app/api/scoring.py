"""POST /score: how likely the model finds a whole text.

    body ─ ScoreRequest ─> the backend of body.model ─> backend.score(text) ─> Score ─> JSON

The text is read exactly as /predict reads it (<eos> first, unknown words as <unk>, a line
break as <eos>); each token after that first <eos> is scored given everything before it, and
the perplexity is exp(mean negative log probability) over those tokens, as `nextword evaluate`
defines it. Nothing is added after the last token: a text is scored as far as it goes.

The limits and errors are /predict's: NEXTWORD_MAX_TEXT_CHARS, NEXTWORD_PREDICT_TIMEOUT_S, the
API key when one is set, and the body checks of app.api.app's middlewares.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from app.api.documented import documented
from app.api.errors import TextHasNoWord, TextTooLong
from app.api.routes import ModelsDep, backend_of, within
from app.api.schemas import TEXT_CEILING, ModelRef, model_field
from app.inference.predictor import ModelInfo
from app.inference.scoring import NoWordToScore, Score
from app.settings import Settings

# What a text needs to have a word, for the OpenAPI document: a character other than a space, a
# line break or a control character (the tokenizer turns those into spaces). A model whose
# tokenizer strips punctuation reads no word in "!!" either: that text is refused with the same
# 422 as an empty one.
HAS_A_WORD = r"[^\s\x00-\x1f\x7f-\x9f]"
# Digits shown of each probability: float32's precision, the same as /predict shows.
SIGNIFICANT_DIGITS = 8

EXAMPLE_TEXT = "the company said it expects to report a loss"


class ScoreRequest(BaseModel):
    # strict, extra fields refused, as PredictRequest.
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"text": EXAMPLE_TEXT}]}
    )

    text: str = Field(
        max_length=TEXT_CEILING,
        json_schema_extra={"pattern": HAS_A_WORD},
        description="The text to score: at least one word. Read as /predict reads it; a line "
        "break ends a sentence. At most NEXTWORD_MAX_TEXT_CHARS characters (10000 by default).",
    )
    continuous_cache: bool = Field(
        default=True,
        description="Mix in the model's continuous cache over the text before each token, as "
        "/predict does (when the model has one); false: the model alone.",
    )
    model: str | None = model_field()


class TokenProbability(BaseModel):
    token: str = Field(description="A token read (unknown words as the unknown token)")
    probability: float = Field(description="The model's probability of it after the text before")


class ScoreResponse(BaseModel):
    # Measured: the shipped model (ptb version 3), EXAMPLE_TEXT.
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "perplexity": 9.2471836,
                    "tokens": [
                        {"token": "the", "probability": 0.22770636},
                        {"token": "company", "probability": 0.068598164},
                        {"token": "said", "probability": 0.14314513},
                        {"token": "it", "probability": 0.31678136},
                        {"token": "expects", "probability": 0.079769188},
                        {"token": "to", "probability": 0.57105212},
                        {"token": "report", "probability": 0.011456589},
                        {"token": "a", "probability": 0.11248978},
                        {"token": "loss", "probability": 0.048642013},
                    ],
                    "model": {"name": "ptb", "version": 3},
                }
            ]
        }
    )

    perplexity: float = Field(
        description="exp(mean negative log probability of the tokens): lower is likelier"
    )
    tokens: list[TokenProbability] = Field(
        description="Each token read after the sentence start, with its probability given "
        "the text before it (the sentence start <eos> included)"
    )
    model: ModelRef


def score_body(score: Score, model: ModelInfo) -> bytes:
    """/score's JSON body: a ScoreResponse, written straight from the score (a long text has
    thousands of tokens, which need no validation on the way out)."""
    return to_json(
        {
            "perplexity": _rounded(score.perplexity),
            "tokens": [
                {"token": token, "probability": _rounded(probability)}
                for token, probability in zip(score.tokens, score.probabilities, strict=True)
            ],
            "model": {"name": model.name, "version": model.version},
        }
    )


def _rounded(value: float) -> float:
    # Computed in float32: the digits past its precision say nothing.
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def score_routes(settings: Settings) -> APIRouter:
    """POST /score, its limits taken from `settings` when the app is made (as /predict's)."""
    router = APIRouter()

    @router.post(
        "/score",
        summary="Score a text: its perplexity and each word's probability",
        tags=["prediction"],
        response_model=ScoreResponse,  # what the body is; score_body writes it
        responses=documented(400, 408, 413, 415, 422, 431, 503, 504),
    )
    async def score(body: ScoreRequest, models: ModelsDep) -> Response:
        """How likely the model finds `text`: each token's probability given all before it,
        from the start of a sentence, and the perplexity over them.

        An empty text, or one of spaces and line breaks only, has nothing to score (422).
        """
        if len(body.text) > settings.max_text_chars:
            raise TextTooLong(len(body.text), settings.max_text_chars)
        backend = backend_of(models, body.model)
        # At the deadline the answer is a 504 at once; the computation, in a worker thread,
        # finishes on its own (it cannot be stopped half-way).
        try:
            result = await within(
                settings.predict_timeout_s, backend.score(body.text, body.continuous_cache)
            )
        except NoWordToScore:
            raise TextHasNoWord() from None
        return Response(score_body(result, backend.info), media_type="application/json")

    return router
