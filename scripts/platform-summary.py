#!/usr/bin/env python3
"""The end of `make lab`: where the inference API answers, a short load test through the VIP, one failover drill.

Prints the base URL, the model, a ready-to-paste curl and OpenAI-client snippet, then runs a bounded
`lab bench` (8 prompts, concurrency 4, 32 tokens each) and `lab drill failover --target inference`
through the platform VIP and prints the bench's summary table and the drill's outage. Exit status 1 when
the API does not answer, the bench fails or the drill does not recover.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lab_tasks.remote import ssh_host
from lab_tasks.topology import INFERENCE_GROUP, Inventory, default_inventory_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LAB = PROJECT_ROOT / ".venv" / "bin" / "lab"
BENCH = ["--api", "chat", "--num-prompts", "8", "--concurrency", "4", "--input-len", "64", "--output-len", "32",
         "--warmup", "1", "--max-duration", "120", "--request-timeout", "120", "--no-plots"]
SERVICE = "opslab-inference"


def served_model(api: str, wait_s: float = 60.0) -> str:
    """The model GET /v1/models lists at the VIP, waiting a little for a VIP that is still settling."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return httpx.get(f"{api}/v1/models", timeout=5, trust_env=False).json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            if time.monotonic() > deadline:
                raise SystemExit(f"Error: the API at {api} does not answer; run `lab check capstone` to see why")
            time.sleep(2)


def node_devices(inventory: Inventory) -> set[str]:
    """The device (cuda, cpu) each node's service runs on, from its unit's command line."""
    devices = set()
    for name in inventory.hosts(INFERENCE_GROUP):
        host = ssh_host(inventory.host(name))
        try:
            found = re.search(r"device=(\w+)", host.run(f"systemctl show {SERVICE} -p ExecStart").stdout)
            devices.add(found.group(1) if found else "unknown")
        finally:
            host.backend.close()
    return devices


def banner(api: str, model: str, devices: set[str]) -> str:
    device = ", ".join(sorted(devices))
    # gpu_node already said "CPU fallback" in the play output; this only names the device.
    cpu_note = "  (no usable NVIDIA GPU on the nodes)" if devices == {"cpu"} else ""
    return f"""
The inference API answers at the platform VIP
  base URL  {api}/v1
  model     {model}
  device    {device}{cpu_note}

  curl -N {api}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "stream": true, "max_tokens": 64, "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="{api}/v1", api_key="unused")
  for chunk in client.chat.completions.create(model="{model}", stream=True,
                                              messages=[{{"role": "user", "content": "Hello!"}}]):
      print(chunk.choices[0].delta.content or "", end="", flush=True)
"""


def main() -> int:
    inventory = Inventory(default_inventory_path())
    api = inventory.endpoints()["inference"]
    model = served_model(api)
    print(banner(api, model, node_devices(inventory)), flush=True)
    print(f"Load test through the VIP: lab bench --endpoint platform={api} {' '.join(BENCH)}", flush=True)
    bench = subprocess.run([str(LAB), "bench", "--endpoint", f"platform={api}", *BENCH], cwd=PROJECT_ROOT)
    print("\nFailover drill: lab drill failover --target inference --json", flush=True)
    drill = subprocess.run([str(LAB), "drill", "failover", "--target", "inference", "--json"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True)
    try:
        result = json.loads(drill.stdout)
    except ValueError:
        print(f"the drill printed no result (exit {drill.returncode}): {drill.stderr.strip()[-500:]}")
        return 1
    print(f"  {result.get('method')}: VIP {result.get('from_host')} -> {result.get('to_host')}, "
          f"outage {result.get('outage_s')} s, {result.get('failed')}/{result.get('requests')} requests failed"
          + ("" if result.get("recovered") else "  (NOT RECOVERED)"))
    return 0 if bench.returncode == 0 and drill.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
