"""``eas-vast``: the Vast.ai instances of a sweep, from its records.

    eas-vast list DIR       every instance the sweep created and whether it was destroyed
    eas-vast destroy DIR    destroy every instance the sweep created and did not destroy;
                            jobs left running or queued become lost (resumable)

Use ``destroy`` after a launcher was killed (``kill -9``, a lost laptop): Vast bills a
running instance by the second and a stopped one for its disk.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eas.vast import api, records


def _root(sweep_dir: Path) -> Path:
    from eas.sweep.records import read_manifest

    folder = (read_manifest(sweep_dir) or {}).get("submitit_folder")
    return Path(folder.replace("%j", "x")).parent if folder else sweep_dir / ".submitit"


def _lose_unfinished(root: Path) -> int:
    return sum(records.mark_lost(f.parent, "instance destroyed by eas-vast destroy")
               for f in root.glob(f"*/{records.JOB_STATE}"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eas-vast", description="The Vast.ai instances of an eas sweep.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("list", "the instances the sweep created"), ("destroy", "destroy the sweep's instances")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("dir", type=Path, metavar="DIR", help="the sweep dir (hydra.sweep.dir)")
        s.add_argument("--server-url", default=None, help="the API server (default: the SDK's, or VAST_URL)")
    args = p.parse_args(argv)
    root = _root(args.dir)
    insts = records.instances(root)
    if args.command == "list":
        for iid, r in insts.items():
            print(f"{iid}\t{r['last']}\t{r.get('gpu_name', '?')}\t${r.get('dph_total', '?')}/h\t{r.get('label', '')}")
        return 0
    live = [i for i, r in insts.items() if r["last"] != "destroyed"]
    rc = 0
    if live:
        try:
            vast = api.client(args.server_url)
        except api.VastError as e:
            print(f"eas-vast: error: {e}", file=sys.stderr)
            return 2
        for iid in live:
            try:
                api.destroy(vast, iid)
                records.log_instance(root, "destroyed", iid, by="eas-vast destroy")
                print(f"destroyed instance {iid}")
            except api.VastError as e:
                rc = 1
                print(f"eas-vast: could not destroy instance {iid}: {e}", file=sys.stderr)
    n = _lose_unfinished(root)
    print(f"{len(insts)} instance(s) recorded, {len(live)} destroyed now; {n} unfinished job(s) marked lost "
          f"(eas-sweep resume {args.dir})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
