"""The benchmark's own arithmetic and plumbing (issue 19): the log-line and before/after tables, the callgrind
report's parsing, the config of an instruction count, and the export of another revision."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import servers
from bench.instructions import by_object, instruction_config, parse_annotate, top_functions
from bench.load import LoadResult
from bench.report import compare_table, log_line_table, render
from bench.results import Results, Run
from bench.servers import BenchError
from bench.trees import exported_tree, resolve
from gateway.config import load_config


def _run(server: str, case: str, conc: int, rps: float, cpu_ms: float) -> Run:
    load = LoadResult(rps, 1.0, 1.5, 2.0, 3.0, int(rps * 3), 0, 0)
    return Run(server, case, conc, load, cpu_ms)


def _rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()[2:]]


def test_log_line_table_puts_both_gateways_against_the_same_floor_run() -> None:
    results = Results(settings={})
    results.runs += [
        _run("floor", "messages", 50, 4000, 0.150),
        _run("gateway", "messages", 50, 2400, 0.310),
        _run("gateway-nolog", "messages", 50, 2800, 0.270),
    ]
    [row] = _rows(log_line_table(results))
    assert row == [
        "/v1/messages",
        "50",
        "4,000",
        "2,400",
        "2,800",
        "60%",
        "70%",
        "0.310",
        "0.270",
        "+0.040",
    ]


def test_compare_table_gives_each_tree_its_ratio_and_the_difference_in_points() -> None:
    results = Results(settings={"compare": "gateway@a8bbcab"})
    results.runs += [
        _run("floor", "chat_stream", 50, 2000, 0.2),
        _run("gateway", "chat_stream", 50, 1300, 0.4),
        _run("gateway@a8bbcab", "chat_stream", 50, 1240, 0.45),
    ]
    table = compare_table(results)
    assert "a8bbcab/floor" in table.splitlines()[0]
    [row] = _rows(table)
    assert row[:8] == ["/v1/chat/completions stream", "50", "2,000", "1,300", "1,240", "65%", "62%", "+3"]
    assert "## Before/after: gateway@a8bbcab vs this tree" in render(results)


ANNOTATE = """\
--------------------------------------------------------------------------------
Ir                  file:function
--------------------------------------------------------------------------------
3,000,000 (30.00%)  /b/Python-3.11.7/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/x/lib/libpython3.11.so.1.0]
1,000,000 (10.00%)  /b/Python-3.11.7/./Include/object.h:_PyFrame_Clear
  500,000 ( 5.00%)  /project/aiohttp/_http_writer.c:_write_str [/v/aiohttp/_http_writer.cpython-311-x86_64-linux-gnu.so]
  100,000 ( 1.00%)  ???:memcpy [/usr/lib/x86_64-linux-gnu/libc.so.6]
"""


def test_callgrind_annotate_lines_become_functions_and_objects_per_request() -> None:
    rows = parse_annotate(ANNOTATE)
    assert rows[0] == (3_000_000, "_PyEval_EvalFrameDefault'2", "libpython3.11.so.1.0")
    assert rows[1] == (1_000_000, "_PyFrame_Clear", "object.h")
    assert top_functions(rows, 1000, limit=2) == [
        ("_PyEval_EvalFrameDefault'2 (libpython3.11.so.1.0)", 3000.0),
        ("_PyFrame_Clear (object.h)", 1000.0),
    ]
    assert by_object(rows, 1000) == {  # code inlined from CPython's headers counts as libpython's
        "libpython3.11.so.1.0": 4000.0,
        "_http_writer.cpython-311-x86_64-linux-gnu.so": 500.0,
        "libc.so.6": 100.0,
    }


def test_an_instruction_count_runs_production_logging_with_its_timers_out_of_the_window(tmp_path: Path) -> None:
    path = instruction_config(
        tmp_path / "gateway.yaml",
        dsn="postgresql://u@127.0.0.1/db",
        upstream="http://127.0.0.1:9",
        requests=300,
        tree=None,
    )
    cfg = load_config(path, environ={})  # the gateway itself accepts it
    assert (cfg.logging.level, cfg.logging.format) == (servers.LOG_LEVEL_PRODUCTION, "json")
    assert cfg.usage_log.flush_rows == 300 and cfg.usage_log.flush_interval_ms >= 3_600_000
    assert cfg.budgets.refresh_s >= 3600 and cfg.auth.cache_ttl_s >= 3600
    assert cfg.auth.bcrypt_rounds == load_config(servers.REPO / "gateway.yaml", environ={}).auth.bcrypt_rounds


def test_another_revision_is_exported_without_touching_the_checkout() -> None:
    with exported_tree("HEAD") as tree:
        assert (tree / "gateway" / "__main__.py").is_file()
        assert (tree / "gateway.yaml").is_file()
    assert not tree.exists()
    with pytest.raises(BenchError, match="not a commit"):
        resolve("no-such-revision-here")
