"""``vlmppo export --push-to-hub REPO``: upload an exported folder to the Hugging Face Hub.

``huggingface_hub`` (installed with transformers) does the work; its endpoint and token come from the usual
places (``HF_ENDPOINT``, ``HF_TOKEN`` or ``hf auth login``). Tests point ``HF_ENDPOINT`` at a local
stand-in (tests/hub_standin.py), never at the real Hub.
"""

from __future__ import annotations

from pathlib import Path

from vlmppo.errors import VlmppoError


class HubError(VlmppoError):
    """The Hub refused or could not be reached (offline mode, no token, no permission)."""


def push_folder(
    folder: Path, repo: str, *, private: bool = False, message: str = "Upload from vlmppo export"
) -> str:
    """Create ``repo`` (a model repo; kept if it exists) and upload ``folder`` into it; returns the repo's URL.

    Raises:
        HubError: ``huggingface_hub`` is missing, the repo id is malformed, or the Hub answered with an error.
    """
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HFValidationError
    except ImportError as err:
        raise HubError(
            "--push-to-hub needs the huggingface_hub package.", hint="pip install huggingface_hub"
        ) from err

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=message)
    except HFValidationError as err:
        raise HubError(
            f"--push-to-hub {repo!r} is not a Hub repo id: {err}", hint="Use the form user/name."
        ) from err
    except Exception as err:  # HTTP errors, offline mode, connection errors: all the user's to fix
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HubError(
            f"Could not push {folder} to the Hub repo {repo!r} ({type(err).__name__}: {first}).",
            hint="Check HF_TOKEN (or `hf auth login`), HF_HUB_OFFLINE, and that you may write to that repo; "
            "the exported folder is complete, so you can upload it later.",
        ) from err
    return str(url)
