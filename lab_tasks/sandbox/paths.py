"""Where the sandbox keeps things on the control host."""
import os
from pathlib import Path

from lab_tasks.registry import PROJECT_ROOT

CACHE_DIR = Path(os.environ.get("OPSLAB_CACHE", "/var/cache/opslab"))
STATE_DIR = Path("/var/lib/opslab")
HOSTS_DIR = STATE_DIR / "hosts"
SSH_DIR = CACHE_DIR / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
INVENTORY_FILE = PROJECT_ROOT / "inventory" / "sandbox" / "hosts.yml"
