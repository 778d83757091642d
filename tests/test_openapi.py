"""`GET /openapi.json` (SPEC §11): the document, and Schemathesis as its judge against a live server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.core.errors import STATUS_BY_CODE
from harness.core.gate import Gate
from harness.testing import ServerProcess
from harness.web.openapi import openapi_document

from .conftest import BOTS


def error_codes(document: dict) -> dict[str, set[str]]:
    """Every error code the document declares, with the statuses it may come with."""
    found: dict[str, set[str]] = {}
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, answer in operation["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                if "$ref" in schema:
                    schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
                for part in schema.get("allOf", [])[1:]:
                    if "error" not in part.get("properties", {}):
                        continue
                    error = part["properties"]["error"]
                    for code in error.get("enum", [error.get("const")]):
                        found.setdefault(code, set()).add(status)
    return found


async def test_the_document_declares_every_contract_error_with_its_status(client: httpx.AsyncClient,
                                                                         gate: Gate) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    declared = error_codes(document)
    for code, status in STATUS_BY_CODE.items():
        if code != "unauthorized":
            assert str(status) in declared.get(code, set()), f"{code} ({status}) is not in the document"
    assert declared["not_found"] == {"404"} and declared["method_not_allowed"] == {"405"}
    # Without --api-token nothing is protected, and nothing answers 401 unauthorized.
    assert "securitySchemes" not in document["components"] and "unauthorized" not in declared
    protected = openapi_document(max_body=1024, protected=True)
    assert error_codes(protected)["unauthorized"] == {"401"}
    assert protected["paths"]["/api/bots"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in protected["paths"]["/webhooks/{bot_id}/{block_id}"]["post"]


async def test_the_document_names_the_bots_it_serves(client: httpx.AsyncClient, gate: Gate) -> None:
    from .conftest import webhook_bot

    await gate.add_bot(webhook_bot())
    document = (await client.get("/openapi.json")).json()
    parameters = {p["name"]: p for p in document["paths"]["/webhooks/{bot_id}/{block_id}"]["post"]["parameters"]}
    assert list(parameters["bot_id"]["examples"]) == ["pay"] and list(parameters["block_id"]["examples"]) == ["wait"]


async def test_an_unknown_method_names_the_allowed_ones(client: httpx.AsyncClient) -> None:
    response = await client.delete("/healthz")
    assert (response.status_code, response.json()["error"]) == (405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_nothing_against_the_schema(tmp_path: Path) -> None:
    """Schemathesis 4 (its `st` CLI) against a live `harness serve --api-token`: examples, coverage,
    fuzzing and stateful phases (links lead from a started conversation to its webhook). Its
    default checks run — 5xx, undocumented status, content type, headers, response schema,
    schema-violating request accepted, undocumented method not answered 405, auth ignored — except
    "schema-valid request rejected": a bot can satisfy the schema's shape and still be invalid
    (a dangling edge), which the document answers with its 422."""
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    with ServerProcess.harness_serve("--api-token", "fuzz-token", "--bots", str(BOTS),
                                     "--store", f"sqlite:{tmp_path / 'gate.db'}", log=tmp_path / "serve.log") as server:
        run = subprocess.run(
            [st, "run", f"{server.url}/openapi.json", "--header", "Authorization: Bearer fuzz-token",
             "--max-examples", "25", "--seed", "1", "--no-color", "--exclude-checks", "positive_data_acceptance",
             "--request-timeout", "10", "--report", "junit", "--report-dir", str(tmp_path / "report")],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
    summary = run.stdout[-3000:]
    print(summary)
    assert run.returncode == 0, summary
    assert "passed" in summary and "failed" not in summary.lower().split("summary")[-1]
