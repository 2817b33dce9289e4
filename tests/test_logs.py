"""JSON log lines, written in batches."""

from __future__ import annotations

import io
import logging

import orjson

from imgsrv.logs import BatchingStreamHandler, JsonFormatter, log_fields


def make_logger(stream: io.StringIO, **kwargs: float) -> logging.Logger:
    logger = logging.getLogger(f"imgsrv.test.{id(stream)}")
    logger.handlers.clear()
    handler = BatchingStreamHandler(stream, **kwargs)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_lines_are_batched_until_flush_or_batch_size() -> None:
    stream = io.StringIO()
    logger = make_logger(stream, max_lines=3, max_delay=60)
    logger.info("one", extra={"status": 200})
    logger.info("two")
    assert stream.getvalue() == ""
    logger.info("three")  # the third line fills the batch
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == ["one", "two", "three"]
    assert lines[0]["status"] == 200 and lines[0]["level"] == "info"
    assert lines[0]["ts"].endswith("Z")
    logger.info("four")
    logger.handlers[0].flush()
    assert stream.getvalue().splitlines()[-1].startswith('{"ts"')
    assert orjson.loads(stream.getvalue().splitlines()[-1])["msg"] == "four"


def test_warnings_and_old_lines_are_written_at_once() -> None:
    stream = io.StringIO()
    logger = make_logger(stream, max_lines=100, max_delay=60)
    logger.info("quiet")
    logger.warning("loud")
    assert [orjson.loads(x)["msg"] for x in stream.getvalue().splitlines()] == ["quiet", "loud"]
    stale = io.StringIO()
    logger = make_logger(stale, max_lines=100, max_delay=0)
    logger.info("late")
    assert orjson.loads(stale.getvalue())["msg"] == "late"


def test_log_fields_writes_the_same_line_as_a_record_would() -> None:
    stream = io.StringIO()
    logger = make_logger(stream, max_lines=100, max_delay=60)
    child = logging.getLogger(logger.name + ".access")  # propagates to the JSON handler
    logger.info("request", extra={"status": 200, "path": "/a"})
    log_fields(child, "request", {"status": 200, "path": "/a"})
    logger.setLevel(logging.WARNING)
    log_fields(child, "request", {"status": 204})  # below the level: nothing
    logger.handlers[0].flush()
    record_line, direct_line = (orjson.loads(x) for x in stream.getvalue().splitlines())
    assert direct_line.pop("logger") == logger.name + ".access"
    assert record_line.pop("logger") == logger.name
    assert direct_line.pop("ts").endswith("Z") and record_line.pop("ts").endswith("Z")
    assert (
        direct_line
        == record_line
        == {
            "level": "info",
            "msg": "request",
            "status": 200,
            "path": "/a",
        }
    )


def test_log_fields_gives_other_handlers_a_normal_record() -> None:
    logger = logging.getLogger("imgsrv.test.plain")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    log_fields(logger, "request", {"status": 503})
    assert len(records) == 1
    assert records[0].getMessage() == "request" and records[0].__dict__["status"] == 503
