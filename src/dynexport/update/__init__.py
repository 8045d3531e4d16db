"""Field updates: RAUC A/B bundles, the health check that commits a trial boot, rollback reports.

``health`` and ``state`` are pure; ``rauc`` runs the ``rauc`` program; ``service`` holds the tasks
the App runs; ``cli`` is ``dynexport update``. Design: docs/update.md.
"""
