"""Label Studio ML backend for Weighted Task Diversity: FastAPI server, RQ jobs, admin CLI.

``python -m backend serve|worker|settings``; see ``backend.cli``.
"""
