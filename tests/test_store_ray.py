"""The Ray engine on a real local Ray cluster: head on 127.0.0.1 inside a loopback-only network
namespace (docs/scale.md), two embedding actors (worker processes). It writes the store the
local engine writes, and a SIGKILLed run resumes with every image exactly once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_store import _images, _rows

from dermfm.store import embed_source

pytestmark = pytest.mark.slow

INNER = """
import subprocess, sys
from pathlib import Path
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
import ray
sys.path.insert(0, {tests!r})
ray.init(num_cpus=4, include_dashboard=False, _temp_dir={temp!r}, configure_logging=False)
try:
    import dermfm
    from dermfm.store import embed_source
    import test_store
    model = dermfm.load_model({model!r})
    report = embed_source({images!r}, {store!r}, model, engine="ray", actors=2, shard_size=3,
                          batch_size=2)
    assert report.written == report.units and not report.errors, report
    address = ray.get_runtime_context().gcs_address
    test_store.assert_killed_then_resumed(
        ["--engine", "ray", "--address", address, "--actors", "2"], Path({model!r}),
        Path({killed!r}))
finally:
    ray.shutdown()
"""


def _namespace_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _namespace_available(), reason="needs unshare -n (root) for Ray")
def test_ray_engine_matches_local_and_resumes_after_sigkill(
    oc_model, tiny_open_clip: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    images = tmp_path / "images"
    _images(images, 10, seed=4)
    local = tmp_path / "local"
    embed_source(images, local, oc_model, shard_size=3, batch_size=2)
    killed = tmp_path / "killed"
    killed.mkdir()
    temp = tempfile.mkdtemp(prefix="dermfm-ray-", dir="/tmp")  # short socket paths
    script = tmp_path / "inner.py"
    script.write_text(
        textwrap.dedent(
            INNER.format(
                tests=str(Path(__file__).parent),
                temp=temp,
                model=str(tiny_open_clip),
                images=str(images),
                store=str(tmp_path / "ray-store"),
                killed=str(killed),
            )
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        done = subprocess.run(
            ["unshare", "-n", sys.executable, str(script)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=1200,
        )
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-4000:]
    by_local, by_ray = _rows(local), _rows(tmp_path / "ray-store")
    assert sorted(by_local) == sorted(by_ray)
    for image_id, row in by_local.items():
        other = by_ray[image_id]
        assert (row["key"], row["sha256"], row["label"]) == (
            other["key"],
            other["sha256"],
            other["label"],
        )
        np.testing.assert_allclose(row["vector"], other["vector"], rtol=0, atol=1e-6)
