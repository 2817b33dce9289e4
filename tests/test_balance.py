"""Spreading keep-alive connections over worker processes with a shared load board."""

from __future__ import annotations

import os

import pytest
from starlette.testclient import TestClient

from imgsrv import balance, serving
from imgsrv.app import create_app
from imgsrv.balance import CLOSE_INTERVAL, LoadBoard
from tests.conftest import corpus_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_busier_worker_hands_back_one_connection_per_interval() -> None:
    board = LoadBoard(4)
    clock = Clock()
    busy, idle = board.worker(0, 1001, clock), board.worker(1, 1002, clock)
    for _ in range(5):
        busy.started()
    idle.started()
    assert board.mean_load() == 3.0
    assert not idle.should_close()
    assert busy.should_close()
    assert not busy.should_close()  # at most one per interval
    clock.now += CLOSE_INTERVAL
    assert busy.should_close() and busy.closed == 2
    for _ in range(3):
        busy.finished()  # 2 against 1: as even as they can be
    clock.now += CLOSE_INTERVAL
    assert not busy.should_close()


def test_balanced_or_lightly_loaded_workers_keep_their_connections() -> None:
    board = LoadBoard(3)
    a, b = board.worker(0, 1, Clock()), board.worker(1, 2, Clock())
    for _ in range(4):
        a.started()
        b.started()
    a.started()  # 5 against 4
    assert not a.should_close() and not b.should_close()
    lone = LoadBoard(2).worker(0, 3, Clock())
    for _ in range(5):
        lone.started()
    assert not lone.should_close()  # nowhere else to go


def test_an_exited_worker_no_longer_counts() -> None:
    board = LoadBoard(2)
    a, b = board.worker(0, 1, Clock()), board.worker(1, 2, Clock())
    for _ in range(6):
        a.started()
    assert board.mean_load() == 3.0 and a.should_close()
    board.clear(1)
    assert board.read(1) == (0, 0)
    assert board.mean_load() == 6.0
    assert board.free_slot({0}) == 1 and board.free_slot({0, 1}) is None
    del b


def test_the_board_is_shared_with_forked_workers() -> None:
    board = LoadBoard(2)
    pid = os.fork()
    if pid == 0:  # the child writes its slot and leaves at once
        worker = board.worker(1, os.getpid(), Clock())
        for _ in range(3):
            worker.started()
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.read(1) == (pid, 3)


def test_gunicorn_hooks_give_each_worker_a_slot_and_free_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Worker:
        pid = 0

    board = LoadBoard(2)
    monkeypatch.setattr(serving, "_load_board", board)
    monkeypatch.setattr(serving, "_load_slots", {})
    first, second, third = Worker(), Worker(), Worker()
    serving.pre_fork(None, first)  # type: ignore[arg-type]
    serving.pre_fork(None, second)  # type: ignore[arg-type]
    serving.pre_fork(None, third)  # type: ignore[arg-type]  # no slot left: not balanced
    assert [getattr(w, serving.LOAD_SLOT_ATTRIBUTE, None) for w in (first, second, third)] == [
        0,
        1,
        None,
    ]
    serving.post_fork(None, second)  # type: ignore[arg-type]
    try:
        load = balance.this_worker()
        assert load is not None and load.slot == 1
        assert board.read(1) == (os.getpid(), 0)
    finally:
        balance.set_this_worker(None)
    serving.child_exit(None, second)  # type: ignore[arg-type]
    assert board.read(1) == (0, 0)
    assert board.free_slot(set(serving._load_slots.values())) == 1


def test_an_overloaded_worker_answers_with_connection_close(corpus_dir: object) -> None:
    board = LoadBoard(2)
    load = board.worker(0, os.getpid(), Clock())
    board.worker(1, 2, Clock())  # a second, idle worker
    url = "/_/w:20/plain/local://orientation/Landscape_1.jpg"
    with TestClient(create_app(corpus_settings())) as client:
        assert "connection" not in client.get(url).headers
        balance.set_this_worker(load)
        try:
            assert client.get(url).headers.get("connection") != "close"  # 1 in flight
            load.in_flight = 4  # as if four more requests of this worker were in flight
            closing = client.get(url)
            assert closing.status_code == 200 and closing.headers["connection"] == "close"
            assert load.in_flight == 4  # the request counted itself in and out
        finally:
            balance.set_this_worker(None)
