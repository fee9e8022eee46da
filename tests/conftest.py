"""Shared fixtures: the real embedded broker (one per session), a small generic
dataset and its real catalog, and two tiny fine-tuned artifacts. Helpers that are
not fixtures are in ``tests/helpers.py``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from streams.contracts import Topics
from tests.helpers import write_generic_dataset


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The real embedded Tansu broker, once per test session."""
    with EmbeddedBroker(partitions=2, topics=Topics("session-")) as b:
        yield b


@pytest.fixture
def topics(broker: EmbeddedBroker) -> Topics:
    """A fresh set of topics (uuid prefix) for one test."""
    t = Topics(f"t{uuid.uuid4().hex[:10]}-")
    broker.create_topics(t)
    return t


@pytest.fixture(scope="session")
def generic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_generic_dataset(tmp_path_factory.mktemp("generic"))


@pytest.fixture(scope="session")
def encoder():
    from model.encoder import Encoder

    return Encoder(device="cpu")


@pytest.fixture(scope="session")
def catalog_path(generic_data: Path, encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real catalog (MiniLM vectors + FAISS) of the small generic dataset."""
    from corpus.datasets import load_dataset
    from model.index import build_catalog

    path, _ = build_catalog(
        load_dataset(generic_data), encoder, tmp_path_factory.mktemp("cache"), progress=False
    )
    return path


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory):
    """Two fine-tuned versions of a small generic dataset: A (2 steps), then B resumed
    from A's checkpoint (4 steps) -> (artifacts dir, A, B, data dir)."""
    import dataclasses

    from model.finetune import FinetuneConfig, finetune

    data = write_generic_dataset(tmp_path_factory.mktemp("ft-data"), n_users=60)
    out = tmp_path_factory.mktemp("artifacts")
    cfg = FinetuneConfig(
        max_steps=2, batch_size=8, epoch_pairs=16, val_users=30, max_minutes=0, device="cpu"
    )
    a = finetune(data, out, cfg=cfg, progress=False)
    b = finetune(data, out, cfg=dataclasses.replace(cfg, max_steps=4), resume=True, progress=False)
    return out, a, b, data


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration carries the ``integration`` marker, so
    ``-m "not integration"`` selects the unit tier wherever the files are."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
