"""Field updates: RAUC A/B bundles, the health check that commits a trial boot, rollback reports.

``health``, ``state`` and ``check`` (the update URL's manifest, versions and schedule) are pure;
``rauc`` runs the ``rauc`` program; ``service`` holds the tasks the App runs, ``auto`` the update
URL's; ``install`` is the one install path of the web upload and the update URL; ``cli`` is
``dynexport update``. Design: docs/update.md.
"""
