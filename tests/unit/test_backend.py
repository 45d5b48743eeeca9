"""The Backend: where queries are computed (at once on the loop, in batches, in the forked model
process), and what happens on errors, cancellation and close. A model process that dies, is
stuck or cannot be forked: test_model_process.py."""

from __future__ import annotations

import asyncio

import pytest
from support.answers import assert_same_answer
from support.backends import check, children, forks, queries, run, turns, until

from app.inference.backend import BUSY_WINDOW_S, LONG_TEXT, Backend
from app.inference.predictor import Prediction, Predictor, Query

# --- settings -----------------------------------------------------------------------------------


def test_settings_out_of_range_are_refused(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Backend(predictor, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        Backend(predictor, max_wait_s=-1)


# --- batching -----------------------------------------------------------------------------------


@forks
def test_a_query_alone_is_answered_at_once_on_the_loop(
    predictor: Predictor, reference: Predictor
) -> None:
    before = children()

    async def main(backend: Backend) -> tuple[bool, Prediction, dict[str, float]]:
        task = asyncio.create_task(backend.predict(Query("w5 w6 w7 ")))
        await turns(3)  # neither max_wait_s nor a model process: answered within the turn
        return task.done(), await task, backend.stats()

    backend = Backend(predictor, max_batch=8, max_wait_s=10.0, model_process=True)
    done, answer, stats = run(main, backend)
    assert done
    assert_same_answer(answer, reference.predict("w5 w6 w7 "))
    assert children() == before and stats["process_forks"] == 0
    assert (stats["batches"], stats["process_batches"]) == (1, 0)


def test_concurrent_queries_are_batched_and_each_gets_its_own_answer(
    predictor: Predictor, reference: Predictor
) -> None:
    asked = queries(40)

    async def main(backend: Backend) -> tuple[list[Prediction], dict[str, float]]:
        answers = await asyncio.gather(*(backend.predict(query) for query in asked))
        return list(answers), backend.stats()

    answers, stats = run(main, Backend(predictor, max_batch=16))
    check(answers, asked, reference)
    assert stats["batches"] == 3 and stats["mean_batch_size"] == round(40 / 3, 2)  # 16, 16, 8


@forks
def test_concurrent_queries_are_batched_in_the_model_process(
    predictor: Predictor, reference: Predictor
) -> None:
    asked = queries(40)

    async def main(backend: Backend) -> tuple[list[Prediction], dict[str, float]]:
        answers = await asyncio.gather(*(backend.predict(query) for query in asked))
        return list(answers), backend.stats()

    answers, stats = run(main, Backend(predictor, max_batch=8, model_process=True))
    check(answers, asked, reference)
    assert stats["process_forks"] == 1 and stats["mean_batch_size"] > 1
    assert stats["process_batches"] == stats["batches"] >= 5  # at most 8 a batch


@forks
def test_after_company_a_lone_query_still_goes_to_the_model_process(
    predictor: Predictor, reference: Predictor
) -> None:
    asked = queries(3)

    async def main(backend: Backend) -> tuple[list[Prediction], dict[str, float]]:
        answers = await asyncio.gather(backend.predict(asked[0]), backend.predict(asked[1]))
        lone = await backend.predict(asked[2])  # within BUSY_WINDOW_S of the batch above
        return [*answers, lone], backend.stats()

    answers, stats = run(main, Backend(predictor, model_process=True))
    check(answers, asked, reference)
    assert stats["process_batches"] == stats["batches"] == 2


@forks
@pytest.mark.parametrize("model_process", [False, True], ids=["loop", "process"])
def test_a_long_text_alone_goes_to_the_model_process_unless_its_head_is_kept_here(
    predictor: Predictor, reference: Predictor, model_process: bool
) -> None:
    text = "".join(f"w{2 + i % 298} " for i in range(LONG_TEXT // 3))
    assert len(text) >= LONG_TEXT
    predictor.predict(text)  # kept here: typed on, it costs one word's steps on the loop

    async def main(backend: Backend) -> tuple[list[Prediction], dict[str, float]]:
        typed_on = await backend.predict(Query(text + "w9 "))
        await asyncio.sleep(2 * BUSY_WINDOW_S)  # (no company since)
        cold = await backend.predict(Query("w7 " + text))
        await asyncio.sleep(2 * BUSY_WINDOW_S)
        # The model process sent back the reading it kept: typing on is computed here.
        typed_on_cold = await backend.predict(Query("w7 " + text + "w8 "))
        return [typed_on, cold, typed_on_cold], backend.stats()

    answers, stats = run(main, Backend(predictor, model_process=model_process))
    assert_same_answer(answers[0], reference.predict(text + "w9 "))
    assert_same_answer(answers[1], reference.predict("w7 " + text))
    assert_same_answer(answers[2], reference.predict("w7 " + text + "w8 "))
    assert stats["batches"] == 3
    assert stats["process_batches"] == stats["process_forks"] == int(model_process)


@pytest.mark.parametrize(("max_wait_s", "batches"), [(0.0, 2), (0.2, 1)])
def test_a_batch_with_company_waits_max_wait_s_for_more(
    predictor: Predictor, reference: Predictor, max_wait_s: float, batches: int
) -> None:
    asked = queries(3)

    async def main(backend: Backend) -> tuple[list[Prediction], dict[str, float]]:
        first = [asyncio.create_task(backend.predict(query)) for query in asked[:2]]
        await turns(3)  # no time passes: well within the wait
        answers = await asyncio.gather(*first, backend.predict(asked[2]))
        return list(answers), backend.stats()

    answers, stats = run(main, Backend(predictor, max_batch=8, max_wait_s=max_wait_s))
    check(answers, asked, reference)
    assert stats["batches"] == batches


# --- errors, cancellation, close ----------------------------------------------------------------


@forks
@pytest.mark.parametrize("model_process", [False, True], ids=["loop", "process"])
def test_an_error_reaches_every_query_of_its_batch_and_no_other(
    predictor: Predictor, reference: Predictor, model_process: bool
) -> None:
    asked = queries(8)
    asked[2] = asked[2]._replace(top_k=0)  # predict_batch refuses the whole batch

    async def main(backend: Backend) -> list[Prediction | BaseException]:
        tasks = [backend.predict(query) for query in asked]
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        assert backend.in_flight == 0
        return list(answers)

    answers = run(main, Backend(predictor, max_batch=4, model_process=model_process))
    for error in answers[:4]:  # the first batch
        assert isinstance(error, ValueError if not model_process else RuntimeError)
        assert "top_k and phrase_words must be 1 or more" in str(error)
        assert "top_k=0" in str(error)
    check([a for a in answers[4:] if isinstance(a, Prediction)], asked[4:], reference)


@forks
@pytest.mark.parametrize("model_process", [False, True], ids=["loop", "process"])
def test_a_cancelled_query_leaves_the_others_answered(
    predictor: Predictor, reference: Predictor, model_process: bool
) -> None:
    asked = queries(5)

    async def main(backend: Backend) -> list[asyncio.Task[Prediction]]:
        tasks = [asyncio.create_task(backend.predict(query)) for query in asked]
        await turns(1)  # all queued
        tasks[3].cancel()
        await asyncio.wait(tasks)
        assert backend.in_flight == 0
        return tasks

    tasks = run(main, Backend(predictor, max_batch=2, model_process=model_process))
    assert tasks[3].cancelled()
    kept = [0, 1, 2, 4]
    check([tasks[i].result() for i in kept], [asked[i] for i in kept], reference)


@forks
def test_a_query_cancelled_while_its_batch_is_in_the_model_process_leaves_the_others_answered(
    predictor: Predictor, reference: Predictor
) -> None:
    asked = queries(4)

    async def main(backend: Backend) -> tuple[list[asyncio.Task[Prediction]], dict[str, float]]:
        tasks = [asyncio.create_task(backend.predict(query)) for query in asked]
        await until(lambda: backend.stats()["process_forks"] == 1)
        tasks[0].cancel()  # its batch (with tasks[1]) is in the model process by now
        await asyncio.wait(tasks)
        return tasks, backend.stats()

    tasks, stats = run(main, Backend(predictor, max_batch=2, model_process=True))
    assert tasks[0].cancelled()
    check([task.result() for task in tasks[1:]], asked[1:], reference)
    assert stats["process_batches"] == 2 and stats["process_losses"] == 0


@forks
@pytest.mark.parametrize("model_process", [False, True], ids=["loop", "process"])
def test_aclose_answers_what_is_queued_and_can_be_called_again(
    predictor: Predictor, reference: Predictor, model_process: bool
) -> None:
    asked = queries(7)
    before = children()

    async def main() -> list[Prediction]:
        backend = Backend(predictor, max_batch=2, model_process=model_process)
        tasks = [asyncio.create_task(backend.predict(query)) for query in asked[:6]]
        await turns(2)  # the first batch under way, the rest queued
        await backend.aclose()
        await turns(1)  # for the tasks to take the answers aclose handed them
        assert all(task.done() for task in tasks)
        await backend.aclose()
        assert children() == before  # the model process, if any, has ended
        after = await backend.predict(asked[6])  # a straggler is still answered
        return [*(task.result() for task in tasks), after]

    check(asyncio.run(main()), asked, reference)


def test_in_flight_counts_the_queries_being_answered(predictor: Predictor) -> None:
    async def main(backend: Backend) -> None:
        assert backend.in_flight == 0 and await backend.wait_idle(1.0)
        tasks = [asyncio.create_task(backend.predict(query)) for query in queries(2)]
        await turns(1)
        assert backend.in_flight == 2
        assert not await backend.wait_idle(0.01)  # they wait max_wait_s for company
        assert await backend.wait_idle(30.0)
        assert backend.in_flight == 0 and all(task.done() for task in tasks)

    run(main, Backend(predictor, max_wait_s=0.2))


@forks
def test_a_held_backend_forks_no_model_process(predictor: Predictor, reference: Predictor) -> None:
    asked = queries(8)
    before = children()

    async def main(backend: Backend) -> list[Prediction]:
        backend.hold_process(True)
        answers = list(await asyncio.gather(*(backend.predict(q) for q in asked[:2])))
        assert children() == before and backend.stats()["process_forks"] == 0
        assert backend.stats()["process_batches"] == 0
        backend.hold_process(False)
        answers += await asyncio.gather(*(backend.predict(q) for q in asked[2:4]))
        assert len(children() - before) == 1 and backend.stats()["process_batches"] == 1
        backend.hold_process(True)  # one forked already goes on
        answers += await asyncio.gather(*(backend.predict(q) for q in asked[4:]))
        assert backend.stats()["process_forks"] == 1
        assert backend.stats()["process_batches"] == 2
        return answers

    check(run(main, Backend(predictor, max_batch=4, model_process=True)), asked, reference)
