"""The Vast.ai API through the official ``vastai`` SDK: key, offer search, instances.

The SDK reads ``VAST_URL`` for the server (tests point it at a local stand-in). It is
imported only when a client is made (a Vast launch, ``eas-vast destroy``): nothing else
of eas needs it. A call that fails the way a busy or flaky API fails (no connection, a
timeout, 429, 502-504) is tried again, ``API_ATTEMPTS`` times in all, except renting:
a retried ``create_instance`` whose first try reached the server would rent twice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import (
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

log = logging.getLogger("eas")
API_ATTEMPTS = 4  # waits 1, 2, 4 s between them
TRANSIENT_HTTP = frozenset({429, 502, 503, 504})

# instance states that will never become "running" without us (poll stops at once)
DEAD = frozenset({"exited", "offline", "stopped", "unknown", "destroyed"})


class VastError(RuntimeError):
    """Anything a user can act on: no key, a rejected key, no offer, an instance that died."""


def key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vastai" / "vast_api_key"


def api_key() -> str:
    """The API key from ``VAST_API_KEY`` or ``~/.config/vastai/vast_api_key``."""
    key = os.environ.get("VAST_API_KEY", "").strip()
    if not key and key_path().is_file():
        key = key_path().read_text().strip()
    if not key:
        raise VastError(f"no Vast.ai API key: set VAST_API_KEY or write the key to {key_path()} "
                        f"(https://cloud.vast.ai/manage-keys/, or `vastai set api-key KEY`)")
    return key


@dataclass
class OfferSpec:
    """What to rent: the filters sent to ``search_offers`` and the price rule."""

    gpu_name: str | None = "RTX 4090"
    num_gpus: int = 1
    max_dph: float = 1.0  # $/h for the whole instance (on-demand price, or the bid)
    disk_gb: float = 40.0
    spot: bool = False
    min_gpu_ram_gb: float | None = None
    extra_filters: dict | None = None

    def query(self) -> dict:
        q: dict[str, Any] = {"num_gpus": {"eq": int(self.num_gpus)}, "disk_space": {"gte": float(self.disk_gb)}}
        if self.gpu_name:
            q["gpu_name"] = {"eq": self.gpu_name}
        # on-demand: the price we pay; spot: the minimum bid must be under our bid
        q["min_bid" if self.spot else "dph_total"] = {"lte": float(self.max_dph)}
        if self.min_gpu_ram_gb:
            q["gpu_ram"] = {"gte": float(self.min_gpu_ram_gb) * 1024}
        q.update(self.extra_filters or {})
        return q


def client(server_url: str | None = None):
    try:
        from vastai import VastAI
    except ImportError as e:
        raise VastError("hydra/launcher=vast needs the vastai SDK, which eas does not install by default: "
                        "run `make vast` (see launchers/vast/README.md)") from e
    # retry=1: the SDK would also retry create_instance; _call retries what is safe to
    return VastAI(api_key=api_key(), server_url=server_url or os.environ.get("VAST_URL") or None,
                  raw=True, quiet=True, retry=1)


def _transient(e: BaseException) -> bool:
    import requests

    if isinstance(e, requests.HTTPError):
        return e.response is not None and e.response.status_code in TRANSIENT_HTTP
    return isinstance(e, (requests.ConnectionError, requests.Timeout))


def _call(what: str, fn, *args, idempotent: bool = True, **kwargs):
    import requests

    retrying = Retrying(stop=stop_after_attempt(API_ATTEMPTS if idempotent else 1),
                        wait=wait_exponential(multiplier=1, max=4), retry=retry_if_exception(_transient),
                        reraise=True,
                        before_sleep=lambda st: log.info("Vast.ai %s: %s; trying again", what, st.outcome.exception()))
    try:
        return retrying(fn, *args, **kwargs)
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else None
        if code in (401, 403):
            raise VastError(f"Vast.ai rejected the API key ({code} on {what}): check VAST_API_KEY or "
                            f"{key_path()}") from e
        raise VastError(f"Vast.ai {what} failed: {e}") from e
    except requests.RequestException as e:
        raise VastError(f"Vast.ai {what}: cannot reach the API: {e}") from e


def find_offer(vast, spec: OfferSpec, exclude: set[int] = frozenset()) -> dict:
    """The cheapest offer that passes every filter (and is not in ``exclude``)."""
    offers = _call("search_offers", vast.search_offers, query=spec.query(),
                   type="bid" if spec.spot else "on-demand", order="dph_total", storage=spec.disk_gb)
    offers = [o for o in offers or [] if int(o["id"]) not in exclude]
    if not offers:
        kind = "spot (bid)" if spec.spot else "on-demand"
        raise VastError(f"no {kind} Vast.ai offer for {spec.num_gpus} x {spec.gpu_name or 'any GPU'} at "
                        f"<= ${spec.max_dph}/h with >= {spec.disk_gb} GB disk; raise hydra.launcher.max_dph "
                        f"or change hydra.launcher.gpu_name")
    return offers[0]


def create(vast, offer: dict, spec: OfferSpec, image: str, label: str, onstart: str | None = None) -> int:
    """Rent ``offer``; returns the new instance id. Spot instances bid ``max_dph``."""
    kw = {"image": image, "disk": spec.disk_gb, "label": label, "ssh": True, "direct": True, "onstart_cmd": onstart}
    if spec.spot:
        kw["price"] = float(spec.max_dph)
    out = _call("create_instance", vast.create_instance, int(offer["id"]), idempotent=False, **kw)
    if not (isinstance(out, dict) and out.get("success") and out.get("new_contract")):
        raise VastError(f"Vast.ai did not create an instance from offer {offer['id']}: {out}")
    return int(out["new_contract"])


def show(vast, instance_id: int) -> dict | None:
    return _call("show_instance", vast.show_instance, int(instance_id))


def wait_running(vast, instance_id: int, timeout_s: float, poll_s: float, stop=lambda: False) -> dict:
    """Poll until the instance runs and has an SSH address; raise on a dead state, a timeout,
    or ``stop()`` (the launcher is going away)."""
    seen = {"n": 0, "state": None}

    def look() -> dict | None:
        if stop():
            raise VastError(f"stopped while instance {instance_id} was starting")
        row = show(vast, instance_id) or {}
        state = seen["state"] = row.get("actual_status")
        seen["n"] += 1
        if state == "running" and row.get("ssh_host") and row.get("ssh_port"):
            return row
        if state in DEAD and seen["n"] > 1:  # "exited" can be a brief boot state: believed on the second look
            raise VastError(f"instance {instance_id} is {state} and will not run "
                            f"({row.get('status_msg') or 'no message'})")
        return None

    def timed_out(_state) -> dict:
        raise VastError(f"instance {instance_id} did not reach running in {timeout_s:.0f} s "
                        f"(last state: {seen['state']}); raise hydra.launcher.start_timeout_s")

    return Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(poll_s), retry=retry_if_result(lambda r: r is None),
                    retry_error_callback=timed_out)(look)


def destroy(vast, instance_id: int) -> None:
    _call("destroy_instance", vast.destroy_instance, int(instance_id))
