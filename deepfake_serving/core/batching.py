"""Batch isolation, written once: a batch runs as one call; when that call raises, each item runs alone,
so an item that cannot run fails by itself and its neighbours are answered, each result in its place."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


def isolated(items: Sequence[T], one: Callable[[T], R],
             batch: Callable[[Sequence[T]], Sequence[R]] | None = None) -> list[R | Exception]:
    """One result per item, in order: ``batch(items)`` when given and it succeeds, else ``one(item)`` per
    item, an item whose call raises getting its exception as its result."""
    if batch is not None and items:
        try:
            results: list[R | Exception] = list(batch(items))
            if len(results) == len(items):
                return results
        except Exception:  # noqa: BLE001 - retried item by item below
            pass
    answers: list[R | Exception] = []
    for item in items:
        try:
            answers.append(one(item))
        except Exception as exc:  # noqa: BLE001 - this item fails alone
            answers.append(exc)
    return answers


def in_place(items: Sequence[T | Exception], run: Callable[[list[T]], Sequence[R | Exception]]) -> list[R | Exception]:
    """``run`` over the items that are not already failures, its answers put back at their places; if
    ``run`` itself raises, each of those items gets the exception."""
    places = [i for i, item in enumerate(items) if not isinstance(item, Exception)]
    todo = [cast(T, items[i]) for i in places]
    try:
        answers: list[R | Exception] = list(run(todo)) if todo else []
    except Exception as exc:  # noqa: BLE001 - the last resort: these requests fail, the others keep theirs
        answers = [exc] * len(todo)
    results: list = list(items)
    for i, answer in zip(places, answers):
        results[i] = answer
    return results
