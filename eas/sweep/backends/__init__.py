"""eas's launch backends, one module each (``hydra.launcher.backend=<module name>``).

Each module defines ``BACKEND`` (an ``eas.sweep.backend.Backend``) and ``Conf`` (its
``hydra.launcher`` fields, registered as ``hydra/launcher=eas_<name>``); its preset is
``conf/hydra/launcher/<name>.yaml``. See ``eas.sweep.backend`` for the protocol.
"""
