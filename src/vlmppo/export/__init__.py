"""Share what you trained: a checkpoint as a folder plain transformers/peft load, with a model card filled from
its run (``folder.py``, ``card.py``, ``record.py``), and the upload to the Hub (``hub.py``)."""

from vlmppo.export.folder import ExportResult, export_checkpoint
from vlmppo.export.hub import HubError, push_folder

__all__ = ["ExportResult", "HubError", "export_checkpoint", "push_folder"]
