"""Hub sharing: model card, remote code loadable without cortex, push_to_hub through a local stand-in of the Hub's
HTTP API (a server on 127.0.0.1 implementing the endpoints an upload calls; no network)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from cortex.hub import AUTO_MAP, model_card, push_to_hub, save_for_hub
from cortex.model import NeuralTreeModel
from cortex.peft import add_lora
from cortex.trainer import fit_tasks

from .helpers import rbd_slice, rbd_tasks, tiny_model


class HubStandIn(BaseHTTPRequestHandler):
    """The Hub endpoints of create_repo + upload_folder: repo creation, pre-upload (every file 'regular', so
    contents travel base64 inside the commit) and the NDJSON commit, whose files land in `store/<repo>/`."""

    store: Path
    calls: list

    def log_message(self, *args):  # the test reads `calls`, not stderr
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append(("POST", self.path, self.headers.get("authorization")))
        base = f"http://{self.headers['Host']}"
        parts = self.path.split("/")
        if self.path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request.get('organization') or 'user'}/{request['name']}"
            return self._reply(200, {"url": f"{base}/{repo}", "name": repo, "id": "1"})
        if self.path == "/api/validate-yaml":  # the model card's metadata, checked before a README upload
            return self._reply(200, {"errors": [], "warnings": []})
        if len(parts) >= 6 and parts[1:3] == ["api", "models"] and parts[5] == "preupload":
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
            ]})  # fmt: skip
        if len(parts) >= 6 and parts[1:3] == ["api", "models"] and parts[5] == "commit":
            repo = self.store / parts[3] / parts[4]
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    target = repo / item["value"]["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(item["value"]["content"]))
            oid = "0" * 40
            return self._reply(
                200, {"commitUrl": f"{base}/{parts[3]}/{parts[4]}/commit/{oid}", "commitOid": oid}
            )
        return self._reply(404, {"error": f"stand-in has no {self.path}"})


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    handler = type("Handler", (HubStandIn,), {"store": tmp_path / "hub", "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = tiny_model("transformer")
    tasks = rbd_tasks()
    fit_tasks(model, tasks, rbd_slice(32))
    return model, tasks


def test_push_to_hub_uploads_model_tokenizers_card_and_code(hub, trained, tmp_path):
    endpoint, handler = hub
    model, tasks = trained
    info = push_to_hub(model, "lab/rbd-tree", endpoint=endpoint, token="hf_test", tasks=tasks,
                       training_data="Starr 2020 RBD DMS", metrics={"expr/spearman_rho": 0.5})  # fmt: skip
    assert info.oid == "0" * 40
    repo = handler.store / "lab" / "rbd-tree"
    names = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "README.md", "modeling_neural_tree.py",
            "tokenizer/protein/tokenizer_config.json"} <= names  # fmt: skip
    assert [c[1] for c in handler.calls] == [
        "/api/repos/create", "/api/validate-yaml", "/api/models/lab/rbd-tree/preupload/main",
        "/api/models/lab/rbd-tree/commit/main",
    ]  # fmt: skip
    assert all(c[2] == "Bearer hf_test" for c in handler.calls)
    loaded = NeuralTreeModel.from_pretrained(repo).eval()
    inputs = model.tokenize(["NITNLCPFGEVF"])
    torch.testing.assert_close(
        loaded(**inputs).leaf_outputs["bind"].loc, model.eval()(**inputs).leaf_outputs["bind"].loc
    )


def test_model_card_lists_roots_tasks_data_and_metrics(trained):
    model, tasks = trained
    card = model_card(model, repo_id="lab/rbd-tree", tasks=tasks, training_data=["RBD DMS (Starr 2020)"],
                      metrics={"bind/spearman_rho": 0.71})  # fmt: skip
    assert card.startswith("---\nlibrary_name: cortex\n")
    assert "| protein | transformer |" in card
    assert "| bind | regressor | property |" in card and "bind: bind_delta_log10Ka" in card
    assert "| binds | classifier | property |" in card and "binds: binds" in card
    assert "- RBD DMS (Starr 2020)" in card and "| bind/spearman_rho | 0.71 |" in card
    assert 'AutoModel.from_pretrained("lab/rbd-tree", trust_remote_code=True)' in card


# Runs with cortex unimportable: its source folder leaves sys.path and a finder refuses `import cortex`.
WITHOUT_CORTEX = """
import importlib.abc, sys
sys.path = [p for p in sys.path if not p.rstrip("/").endswith("src") and p not in ("", ".")]
class NoCortex(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cortex" or name.startswith("cortex."):
            raise ImportError("cortex is not installed here")
sys.meta_path.insert(0, NoCortex())
import torch
from transformers import AutoModel
directory = sys.argv[1]
model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
assert not any(m == "cortex" or m.startswith("cortex.") for m in sys.modules), "cortex was imported"
reference = torch.load(directory + "/reference.pt")
output = model(input_ids=reference["input_ids"])
torch.testing.assert_close(output.leaf_outputs["expr"].loc, reference["loc"])
print(type(model).__module__)
"""


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["plain", "lora"])
def test_remote_code_loads_without_cortex(trained, tmp_path, lora):
    model, tasks = trained
    if lora:
        model = tiny_model("transformer")
        add_lora(model, r=2)
    model.eval()
    save_for_hub(model, tmp_path, tasks=tasks)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert "from cortex" not in (tmp_path / "modeling_neural_tree.py").read_text()
    input_ids = model.tokenize(["NITNLCPFGEVF", "NITN"])["input_ids"]
    torch.save(
        {"input_ids": input_ids, "loc": model(input_ids=input_ids).leaf_outputs["expr"].loc.detach()},
        tmp_path / "reference.pt",
    )
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_CORTEX, str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "transformers_modules" in result.stdout
