"""``python -m core catalog --from-hub``, offline: ``HfApi.list_models`` answers from a recorded fixture (made-up
repositories in the Hub's JSON shape), and any attempt to open a socket fails the test. Also the paper's three
released pools shipped as ready catalogs in data/catalogs."""
from __future__ import annotations

import csv
import json
import socket
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.hf_api import ModelInfo

from core import cli
from core.errors import DeltaAtlasError, HubError
from core.pool import hub_catalog
from core.pool.catalog import read_catalog

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "hub" / "llama-3.1-8b.json"
BASE = "meta-llama/Llama-3.1-8B"
PAPER = {"llama-3.1-8b": "meta-llama/Llama-3.1-8B", "qwen-2.5-7b": "Qwen/Qwen2.5-7B",
         "gemma-2-9b": "google/gemma-2-9b"}
PAPER_DATASETS = {"legalbench": "legal", "gsm8k": "math", "pubmedqa": "medical", "hellaswag": "commonsense",
                  "opc": "coding"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Offline mode on, and a socket that refuses to connect: only the patched functions may answer."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, at import: set it where it is read

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection to {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hub(monkeypatch) -> list[dict]:
    """``HfApi.list_models`` answering from the fixture; returns the calls it got."""
    responses = json.loads(FIXTURE.read_text())["responses"]
    calls: list[dict] = []

    def list_models(self, *, filter=None, sort=None, limit=None, expand=None, **kwargs):
        calls.append({"filter": filter, "sort": sort, "limit": limit, "expand": expand, **kwargs})
        records = (ModelInfo(**record) for record in responses.get(filter, []))
        return islice(records, limit) if limit is not None else records

    monkeypatch.setattr(HfApi, "list_models", list_models)
    return calls


def failing(monkeypatch, error: Exception) -> None:
    def list_models(self, **kwargs):
        raise error

    monkeypatch.setattr(HfApi, "list_models", list_models)


def http_error(cls, status: int) -> HfHubHTTPError:
    return cls(f"{status} Client Error", response=SimpleNamespace(status_code=status, headers={}, request=None))


def test_the_catalog_reads_back_with_kinds_and_labels(hub, tmp_path):
    path = hub_catalog.write_catalog(hub_catalog.hub_rows(BASE), tmp_path / "hub.csv")
    catalog = read_catalog(path)
    assert catalog.names == ["Llama-3.1-8B-medical", "llama-3.1-8b-gsm8k-lora", "bob--legal-lora",
                             "llama-3.1-8b-coder", "carol--legal-lora", "llama-3.1-8b-chat"]  # most downloaded first
    kinds = {e.name: (e.kind, e.labels["lineage"]) for e in catalog}
    assert kinds["llama-3.1-8b-gsm8k-lora"] == ("lora", "adapter")  # also listed as a finetune: kept once, as adapter
    assert kinds["Llama-3.1-8B-medical"] == ("full", "finetune")
    assert kinds["llama-3.1-8b-coder"] == ("auto", "finetune")     # a "finetune" whose repo holds a PEFT adapter
    assert {e.source.hub_id for e in catalog} >= {"bob/legal-lora", "carol/legal-lora"}
    assert {str(e.base) for e in catalog} == {BASE}
    assert catalog.label_columns == list(hub_catalog.LABELS)
    medical = catalog.get("Llama-3.1-8B-medical").labels
    assert medical["author"] == "dave" and medical["downloads"] == "5000" and medical["likes"] == "41"
    assert medical["license"] == "llama3.1" and medical["datasets"] == "qiaojin/PubMedQA"
    assert medical["pipeline_tag"] == "text-generation" and medical["last_modified"] == "2024-08-15T12:00:00+00:00"
    assert "llama" in medical["tags"].split(";")
    legal = catalog.get("bob--legal-lora").labels
    assert legal["datasets"] == "nguha/legalbench" and legal["license"] == "apache-2.0"  # a card's single string
    carol = catalog.get("carol--legal-lora").labels
    assert carol["datasets"] == "nguha/legalbench;casehold/casehold"  # from the tags, when the card says nothing
    assert carol["license"] == "" and carol["pipeline_tag"] == ""
    assert catalog.get("llama-3.1-8b-coder").labels["license"] == "mit"


def test_a_formula_in_a_label_cannot_run_in_a_spreadsheet(hub, tmp_path):
    path = hub_catalog.write_catalog(hub_catalog.hub_rows(BASE), tmp_path / "hub.csv")
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert not [c for row in rows for c in row.values() if c.startswith(("=", "+", "-", "@"))]
    carol = next(row for row in rows if row["name"] == "carol--legal-lora")
    assert carol["tags"].startswith("'=HYPERLINK(")  # write_catalog put a quote in front


def test_kind_and_limit_shape_the_request(hub):
    adapters = hub_catalog.hub_rows(BASE, kind="adapter", limit=2)
    assert [r["source"] for r in adapters] == ["alice/llama-3.1-8b-gsm8k-lora", "bob/legal-lora"]
    assert {r["kind"] for r in adapters} == {"lora"}
    assert hub[-1]["filter"] == f"base_model:adapter:{BASE}" and hub[-1]["limit"] == 2
    assert hub[-1]["sort"] == "downloads" and "cardData" in hub[-1]["expand"]
    finetunes = hub_catalog.hub_rows(BASE, kind="finetune", limit=0)  # 0: all of them
    assert hub[-1]["filter"] == f"base_model:finetune:{BASE}" and hub[-1]["limit"] is None
    assert {r["lineage"] for r in finetunes} == {"finetune"} and len(finetunes) == 4
    both = hub_catalog.hub_rows(BASE, kind="both", limit=3)  # at most 3 in all, the most downloaded
    assert [r["name"] for r in both] == ["Llama-3.1-8B-medical", "llama-3.1-8b-gsm8k-lora", "legal-lora"]  # no clash


def test_names_are_unique_and_safe():
    names = hub_catalog.unique_names(["a/model", "b/model", "c/Other", "d/other", "e/x", "e/x", "f/_odd name+"])
    assert names == ["a--model", "b--model", "c--Other", "d--other", "e--x", "e--x-2", "odd-name-"]
    assert len({n.lower() for n in names}) == len(names)


def test_the_command_writes_the_catalog(hub, tmp_path, capsys):
    out = tmp_path / "catalogs" / "llama.csv"
    assert cli.main(["catalog", "--from-hub", BASE, "--kind", "adapter", "--limit", "5", "--out", str(out)]) == 0
    assert len(read_catalog(out)) == 3
    printed = capsys.readouterr().out
    assert "3 models of meta-llama/Llama-3.1-8B (3 adapters, 0 finetunes)" in printed
    assert f"python -m core embed --catalog {out}" in printed
    assert hub, "the patched list_models was not what ran"


@pytest.mark.parametrize("error, words", [
    (ConnectionError("[Errno 101] Network is unreachable"), "check your network or HF token"),
    (OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE is set"),
    (http_error(HfHubHTTPError, 429), "HTTP 429"),
    (http_error(HfHubHTTPError, 401), "log in again"),
    (http_error(HfHubHTTPError, 503), "HTTP 503"),
])
def test_hub_failures_name_the_base_and_what_to_do(monkeypatch, tmp_path, capsys, error, words):
    failing(monkeypatch, error)
    with pytest.raises(HubError) as caught:
        hub_catalog.hub_rows(BASE)
    assert isinstance(caught.value, DeltaAtlasError)
    assert BASE in str(caught.value) and words in str(caught.value) and "write the catalog by hand" in str(caught.value)
    out = tmp_path / "x.csv"
    assert cli.main(["catalog", "--from-hub", BASE, "--out", str(out)]) == 2  # one line on stderr, no traceback
    assert words in capsys.readouterr().err and not out.exists()


def test_an_unknown_base_and_a_base_without_children(hub, monkeypatch):
    def model_info(self, repo_id, **kwargs):
        if repo_id == "nobody/nothing":
            raise http_error(RepositoryNotFoundError, 404)
        return ModelInfo(id=repo_id)

    monkeypatch.setattr(HfApi, "model_info", model_info)
    with pytest.raises(HubError, match="has no model nobody/nothing: check the base id"):
        hub_catalog.hub_rows("nobody/nothing")
    with pytest.raises(HubError, match="lists no adapters or finetunes of someone/lonely"):
        hub_catalog.hub_rows("someone/lonely")
    for bad in ("not a hub id", "meta-llama/Llama-3.1-8B@main"):
        with pytest.raises(HubError, match="is not a Hugging Face hub id"):
            hub_catalog.hub_rows(bad)
    assert all(call["filter"].endswith(("nobody/nothing", "someone/lonely")) for call in hub)  # bad ids: never asked


@pytest.mark.parametrize("short", list(PAPER))
def test_the_paper_pools_ship_as_catalogs(short):
    catalog = read_catalog(ROOT / "data" / "catalogs" / f"paper-{short}.csv")
    expected = [f"{short}-{d}-{s}" for d in PAPER_DATASETS for s in ("first", "second", "third")]
    assert catalog.names == expected
    assert [e.source.hub_id for e in catalog] == [f"ASethi04/{n}" for n in expected]
    assert {e.kind for e in catalog} == {"lora"} and {e.base.hub_id for e in catalog} == {PAPER[short]}
    assert catalog.label_columns == ["domain", "dataset", "split", "needs"]
    assert {(e.labels["dataset"], e.labels["domain"]) for e in catalog} == set(PAPER_DATASETS.items())
    assert {e.labels["needs"] for e in catalog} == {"a GPU and the Hugging Face Hub"}
    assert hub_catalog.unique_names([e.source.hub_id for e in catalog]) == expected  # the --from-hub names


def test_the_real_client_in_offline_mode_says_so():
    """Unpatched: huggingface_hub itself refuses in offline mode (before any connection), and the message says why."""
    with pytest.raises(HubError, match=f"HF_HUB_OFFLINE is set.*{BASE}"):
        hub_catalog.hub_rows(BASE)
