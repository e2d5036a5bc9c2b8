"""What runs one submitit job on a Vast instance: ``python -m eas.vast.runner FOLDER``.

The job environment is registered by hand, so the instance needs eas importable
(``PYTHONPATH``) but not installed with its entry points.
"""

from __future__ import annotations

import os
import sys


def main(folder: str) -> None:
    from submitit.core import plugins, submission

    from eas.vast.executor import VastJobEnvironment

    os.environ.setdefault("SUBMITIT_EXECUTOR", "vast")
    plugins.get_job_environments()["vast"] = VastJobEnvironment()  # type: ignore[index]
    submission.process_job(folder)


if __name__ == "__main__":
    main(sys.argv[1])
