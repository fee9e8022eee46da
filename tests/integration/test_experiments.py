"""The experiments file end to end: users outside every experiment get the
configured default arm from the real dataflow and worker.
"""

from __future__ import annotations

import pytest
import yaml

from streams.experiments import (
    assign,
    load_config,
)

# (raw config, fragment the error message must contain)


@pytest.mark.integration
def test_default_arm_serves_the_users_outside_every_experiment_end_to_end(
    tmp_path, broker, topics, catalog_path
):
    """The experiments file's ``default_arm`` is the arm on the lists of users
    outside every experiment (through the real dataflow and worker), and the
    users inside get their variant's arm."""
    import json

    from tests.helpers import collect, pipeline, produce_all, values

    config = tmp_path / "experiments.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "default_arm": {"reranker": "dpp", "lambda": 0.5},
                "experiments": [
                    {
                        "name": "half",
                        "salt": "half-1",
                        "traffic": 0.5,
                        "variants": [
                            {"name": "only", "weight": 1.0, "reranker": "mmr", "lambda": 0.4}
                        ],
                    }
                ],
            }
        )
    )
    cfg = load_config(config)
    users = [f"u{i}" for i in range(40)]
    inside = {u for u in users if assign(cfg, u) is not None}
    assert 0 < len(inside) < len(users)
    events = [
        (
            u.encode(),
            json.dumps(
                {"event_id": f"e-{u}", "type": "click", "user_id": u, "item_id": "k0", "ts": 1e9}
            ).encode(),
        )
        for u in users
    ]
    with pipeline(tmp_path, broker, topics, catalog_path, experiments=config) as procs:
        produce_all(broker.bootstrap, topics.events, events)
        got = collect(
            broker.bootstrap,
            [topics.recommendations],
            until=lambda ms: len(ms) >= len(users),
            procs=procs,
        )
    recs = {r["user_id"]: r for r in values(got, topics.recommendations)}
    assert set(recs) == set(users)
    for user, rec in recs.items():
        if user in inside:
            assert rec["policy"]["arm"] == "mmr:0.4" and rec["experiment"]["name"] == "half"
        else:
            assert rec["policy"]["arm"] == "dpp:0.5", rec["policy"]
            assert rec["policy"]["reranker"] == "dpp" and rec["policy"]["mode"] == "fixed"
