"""The Vast executor against a local stand-in for the API, with the real vastai client.

No SSH here (tests/integration/test_vast.py runs jobs on a loopback sshd): these check
what is sent, how jobs are split over instances, and that every instance is destroyed
when something goes wrong before a job runs.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("vastai", reason="the vastai SDK is not installed (eas's extra `vast`): run `make vast`")

from eas.vast import api, records
from eas.vast.executor import VastExecutor, teardown_all
from tests.vast_fake import FakeVast, offer

KEY = "k-123"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("VAST_API_KEY", KEY)
    f = FakeVast(key=KEY)
    url = f.start()
    f.url = url
    yield f
    teardown_all("test ended")
    f.stop()


def executor(tmp_path, fake, **params) -> VastExecutor:
    ex = VastExecutor(tmp_path / "sweep" / ".submitit" / "%j")
    base = {"server_url": fake.url, "image": "img", "start_timeout_s": 1, "ssh_timeout_s": 1, "poll_s": 0.05, "max_attempts": 1,
                "ssh_key": str(tmp_path / "nokey"), "setup": []}
    base.update(params)
    ex.update_parameters(**base)
    return ex


def wait_done(jobs, timeout=30):
    t0 = time.monotonic()
    while not all(j.done() for j in jobs):
        assert time.monotonic() - t0 < timeout, [j.state for j in jobs]
        time.sleep(0.05)


def test_filters_sent_on_demand_and_spot(fake, tmp_path):
    vast = api.client(fake.url)
    fake.offers.append(offer(150, num_gpus=2, dph_total=0.7))
    assert api.find_offer(vast, api.OfferSpec(gpu_name="RTX 4090", num_gpus=2, max_dph=0.8, disk_gb=60))["id"] == 150
    spot = api.OfferSpec(gpu_name="A100 SXM4", num_gpus=1, max_dph=0.25, spot=True)
    fake.offers.append(offer(200, gpu_name="A100 SXM4", dph_total=1.2, min_bid=0.15))
    o = api.find_offer(vast, spot)
    api.create(vast, o, spot, image="img", label="eas-x")
    q1, q2 = (r["body"] for r in fake.calls("POST", "/api/v0/bundles/"))
    assert q1["gpu_name"] == {"eq": "RTX 4090"} and q1["num_gpus"] == {"eq": 2}
    assert q1["dph_total"] == {"lte": 0.8} and q1["disk_space"] == {"gte": 60.0} and q1["type"] == "on-demand"
    assert q1["order"] == [["dph_total", "asc"]]
    assert q2["type"] == "bid" and q2["min_bid"] == {"lte": 0.25} and q2["gpu_name"] == {"eq": "A100 SXM4"}
    (put,) = fake.calls("PUT", "/api/v0/asks/")
    assert put["path"] == "/api/v0/asks/200/" and put["body"]["price"] == 0.25 and put["body"]["label"] == "eas-x"
    assert all(r["auth"] == f"Bearer {KEY}" for r in fake.requests)


def test_wrong_key_is_a_clear_error(fake, monkeypatch):
    monkeypatch.setenv("VAST_API_KEY", "wrong")
    with pytest.raises(api.VastError, match="rejected the API key"):
        api.find_offer(api.client(fake.url), api.OfferSpec())
    assert fake.requests[-1]["auth"] == "Bearer wrong"


def test_missing_key(monkeypatch, tmp_path):
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(api.VastError, match="no Vast.ai API key: set VAST_API_KEY"):
        api.api_key()
    (tmp_path / "vastai").mkdir()
    (tmp_path / "vastai" / "vast_api_key").write_text("from-file\n")
    assert api.api_key() == "from-file"


def test_no_offer_under_the_price(fake, tmp_path):
    ex = executor(tmp_path, fake, max_dph=0.05)
    job = ex.submit(print, "x")
    wait_done([job])
    rec = records.read_job_state(job.paths.folder)
    assert rec["state"] == "CANCELLED" and "no on-demand Vast.ai offer" in rec["error"] and "<= $0.05/h" in rec["error"]
    assert fake.calls("PUT", "/api/v0/asks/") == []


@pytest.mark.parametrize("state", ["never", "exited", "offline", "unknown"])
def test_instance_that_never_runs_is_destroyed(fake, tmp_path, state):
    fake.start_state = state
    ex = executor(tmp_path, fake, max_attempts=2)
    jobs = ex.map_array(print, ["a", "b"])
    wait_done(jobs)
    assert len(fake.instances) == 2 and fake.live() == []  # two offers tried, both destroyed
    assert all(j.state == "CANCELLED" for j in jobs)
    err = records.read_job_state(jobs[0].paths.folder)["error"]
    assert ("did not reach running" in err) if state == "never" else (f"is {state} and will not run" in err)
    root = ex.root
    assert records.live_instances(root) == [] and len(records.instances(root)) == 2


def test_jobs_are_split_over_instances(fake, tmp_path):
    fake.start_state = "exited"
    ex = executor(tmp_path, fake, instances=2)
    jobs = ex.map_array(print, list("abcde"))
    wait_done(jobs)
    batches = sorted(len(r["jobs"]) for r in records.instances(ex.root).values())
    assert batches == [2, 3] and fake.live() == []
    assert {j.job_id for j in jobs} == {i for r in records.instances(ex.root).values() for i in r["jobs"]}


def test_teardown_when_ssh_fails(fake, tmp_path):
    fake.on_create = lambda iid: ("127.0.0.1", 1)  # running, but nothing listens
    ex = executor(tmp_path, fake)
    job = ex.submit(print, "x")
    wait_done([job])
    err = records.read_job_state(job.paths.folder)["error"]
    assert job.state == "CANCELLED" and "never opened its SSH port 127.0.0.1:1" in err and "public key" not in err
    assert fake.live() == [] and len(fake.calls("DELETE", "/api/v0/instances/")) == 1


def test_last_offer_keeps_the_instance_error(fake, tmp_path):
    """With no other offer to try, the error is what went wrong, not "no offer"."""
    fake.on_create = lambda iid: ("127.0.0.1", 1)
    ex = executor(tmp_path, fake, max_attempts=2, max_dph=0.5, gpu_name="RTX 4090")  # one offer passes
    job = ex.submit(print, "x")
    wait_done([job])
    err = records.read_job_state(job.paths.folder)["error"]
    assert "never opened its SSH port" in err and "no other offer to try" in err, err
    assert fake.live() == [] and len(fake.instances) == 1


def test_teardown_all_on_interrupt(fake, tmp_path):
    fake.start_state = "never"
    ex = executor(tmp_path, fake, start_timeout_s=600)
    job = ex.submit(print, "x")
    t0 = time.monotonic()
    while not fake.instances and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    teardown_all("Ctrl-C")  # what the launcher does on KeyboardInterrupt
    wait_done([job])
    assert fake.live() == [] and job.state == "CANCELLED"


def test_eas_vast_destroy_from_records(fake, tmp_path, capsys):
    from eas.vast.cli import main

    vast = api.client(fake.url)
    spec = api.OfferSpec()
    iid = api.create(vast, api.find_offer(vast, spec), spec, image="img", label="left")
    root = tmp_path / "sweep" / ".submitit"
    root.mkdir(parents=True)
    records.log_instance(root, "created", iid, label="left")
    records.set_job_state(root / "v1_0", "RUNNING")
    assert main(["destroy", str(tmp_path / "sweep"), "--server-url", fake.url]) == 0
    assert fake.live() == [] and records.live_instances(root) == []
    assert records.read_job_state(root / "v1_0")["state"] == "NODE_FAIL"
    assert f"destroyed instance {iid}" in capsys.readouterr().out


def test_a_busy_api_is_tried_again_but_renting_is_not(fake):
    vast = api.client(fake.url)
    fake.errors = [503, 429]
    assert api.find_offer(vast, api.OfferSpec())["id"] == 101
    assert len(fake.calls("POST", "/api/v0/bundles/")) == 3  # two busy answers, then the offers
    fake.errors = [503]
    with pytest.raises(api.VastError, match="create_instance failed"):
        api.create(vast, offer(101), api.OfferSpec(), image="img", label="x")  # a retry could rent twice
    assert len(fake.calls("PUT", "/api/v0/asks/")) == 1


def test_rsync_is_tried_again_on_a_broken_link(monkeypatch):
    from eas.vast import remote

    codes = [255, 0]
    monkeypatch.setattr(remote.subprocess, "run",
                        lambda argv, **kw: type("Done", (), {"returncode": codes.pop(0)})())
    assert remote.Remote("127.0.0.1", 1).rsync("a/", ":b/") == 0 and codes == []
    codes[:] = [23]  # a real error (files missing): not tried again
    assert remote.Remote("127.0.0.1", 1).rsync("a/", ":b/") == 23


def test_eas_sweep_cancel_destroys_the_sweeps_instances(fake, tmp_path, capsys, monkeypatch):
    import json

    from eas.sweep import cli as sweep_cli

    vast = api.client(fake.url)
    spec = api.OfferSpec()
    iid = api.create(vast, api.find_offer(vast, spec), spec, image="img", label="left")
    d = tmp_path / "sweep"
    root = d / ".submitit"
    root.mkdir(parents=True)
    records.log_instance(root, "created", iid, label="left")
    records.set_job_state(root / "v1_0", "RUNNING")
    (d / "sweep.json").write_text(json.dumps({"backend": "eas.vast.backend", "submitit_folder": str(root / "%j"), "jobs": [
        {"num": 0, "overrides": ["layer=1"], "cells": [["layer=1"]], "job_id": "v1_0"}]}))
    monkeypatch.setenv("VAST_URL", fake.url)  # the backend's client: the SDK's server, or VAST_URL
    assert sweep_cli.main(["cancel", str(d)]) == 0
    assert fake.live() == [] and records.read_job_state(root / "v1_0")["state"] == "NODE_FAIL"
    assert f"destroyed instance {iid}" in capsys.readouterr().out
    assert sweep_cli.main(["status", str(d)]) == 1  # the lost job is resumable
