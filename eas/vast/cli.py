"""``eas-vast``: the Vast.ai instances a launch created, from their records.

    eas-vast list DIR       every instance created and whether it was destroyed
    eas-vast destroy DIR    destroy every instance created and not destroyed; jobs left
                            running or queued become lost (resumable)

DIR is a sweep dir (its records are in ``DIR/.submitit``) or the executor's folder
itself. Use ``destroy`` after a launcher was killed (``kill -9``, a lost laptop): Vast
bills a running instance by the second and a stopped one for its disk. ``eas-sweep
cancel DIR`` does the same for a sweep whose ``hydra.launcher.submitit_folder`` is
elsewhere (it reads the sweep's manifest).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eas.vast import api, records
from eas.vast.executor import destroy_recorded


def _root(d: Path) -> Path:
    return d if (d / records.INSTANCES).is_file() else d / ".submitit"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eas-vast", description="The Vast.ai instances of an eas sweep.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("list", "the instances the sweep created"), ("destroy", "destroy the sweep's instances")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("dir", type=Path, metavar="DIR", help="the sweep dir (hydra.sweep.dir)")
        s.add_argument("--server-url", default=None, help="the API server (default: the SDK's, or VAST_URL)")
    args = p.parse_args(argv)
    root = _root(args.dir)
    if args.command == "list":
        for iid, r in records.instances(root).items():
            print(f"{iid}\t{r['last']}\t{r.get('gpu_name', '?')}\t${r.get('dph_total', '?')}/h\t{r.get('label', '')}")
        return 0
    try:
        lines = destroy_recorded(root, args.server_url, "instance destroyed by eas-vast destroy")
    except api.VastError as e:
        print(f"eas-vast: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines) + f" (eas-sweep resume {args.dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
