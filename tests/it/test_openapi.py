"""GET /openapi.json is a valid OpenAPI 3 document (checked by an npm validator), /docs a page."""
import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

VALIDATE = ("require('@apidevtools/swagger-parser').validate(process.argv[1])"
            ".then(a => console.log('valid ' + Object.keys(a.paths).length))"
            ".catch(e => { console.error(e.message); process.exit(1); })")


def test_openapi_document_validates(make_server, tmpdir_path):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    r = s.get("/openapi.json")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    path = os.path.join(tmpdir_path, "openapi.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    node = shutil.which("node")
    assert node and os.environ.get("NODE_PATH"), "run through `make it`: it installs the validator"
    out = subprocess.run([node, "-e", VALIDATE, path], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("valid ")
    # every answer's error shape is documented
    assert set(doc["components"]["schemas"]["Error"]["required"]) == {"detail", "type",
                                                                      "request_id"}
    r = s.get("/docs")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "taskexec API" in r.text and "/openapi.json" in r.text
