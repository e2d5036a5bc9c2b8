"""The launch backends that need nothing outside eas.sweep, one module each (the short names
of ``hydra.launcher.backend``; Vast.ai's is ``eas.vast.backend``).

Each module defines ``BACKEND`` (an ``eas.sweep.backend.Backend``) and ``Conf`` (its
``hydra.launcher`` fields); its preset is ``conf/hydra/launcher/<name>.yaml``. See
``eas.sweep.backend`` for the protocol.
"""
