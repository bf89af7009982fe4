"""Configuration: the wrangler-like files, the environment, validation errors that name the key,
and the CLI contract (`serve` on embedded defaults, `check-config` with secrets redacted)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from servers import NAMESPACE, ServerProcess

from cloudsession.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "wrangler-like-config"
SECRETS = {"SESSIONS_SHARED_SECRET": NAMESPACE, "SESSIONS_RPC_SHARED_KEY": "k"}


def test_development_example_loads():
    settings = load_settings(config_file=EXAMPLES / "development.toml", environ={})
    assert settings.store.backend == "fs" and settings.public_listing is True
    assert settings.public_url == "http://127.0.0.1:8787"


def test_production_example_loads_with_env_sections():
    prod = load_settings(config_file=EXAMPLES / "production.toml", env_name="production", environ=SECRETS)
    assert prod.store.backend == "s3" and prod.store.bucket == "opencode-sessions"
    assert prod.limits.max_body_bytes == 64 * 1024 * 1024 and prod.public_listing is False
    staging = load_settings(config_file=EXAMPLES / "production.toml", env_name="staging", environ=SECRETS)
    assert staging.store.bucket == "opencode-sessions-staging" and staging.public_url == "https://share-staging.example.com"


def test_required_secrets_must_be_in_environment():
    with pytest.raises(ConfigError, match="SESSIONS_RPC_SHARED_KEY"):
        load_settings(config_file=EXAMPLES / "production.toml", environ={"SESSIONS_SHARED_SECRET": NAMESPACE})


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[vars]\nSESSIONS_SHARED_SECRET = "x"\n', "vars.SESSIONS_SHARED_SECRET is a secret"),
        ('[vars]\nNOPE = 1\n', "unknown variable vars.NOPE"),
        ('[vars]\nPUBLIC_ULR = "https://x.test"\n', "unknown variable vars.PUBLIC_ULR (did you mean PUBLIC_URL?)"),
        ('unknown_top = 1\n', "unknown_top: unknown key"),
        ('nmae = "x"\n', "nmae: unknown key (did you mean name?)"),
        ('[[r2_buckets]]\nbinding = "OTHER"\n', "r2_buckets.0.binding"),
        ('[[r2_buckets]]\nbinding = "SESSIONS_STORE"\nbucket_nme = "b"\n', "r2_buckets.0.bucket_nme: unknown key (did you mean bucket_name?)"),
        ('[vars]\nMAX_BODY_BYTES = "lots"\n', "vars.MAX_BODY_BYTES: input should be a valid integer"),
        ('[vars]\nMAX_ITEMS_PER_SYNC = 0\n', "vars.MAX_ITEMS_PER_SYNC: input should be greater than or equal to 1"),
        ('[vars]\nMAX_SHARE_BYTES = 600000000.5\n', "vars.MAX_SHARE_BYTES: input should be a valid integer, got a number with a fractional part"),
        ('[vars]\nPUBLIC_URL = "https://x.test/prefix"\n', "vars.PUBLIC_URL: must be an origin"),
        ('[vars]\nLOG_LEVEL = "LOUD"\n', "vars.LOG_LEVEL: must be one of DEBUG"),
        ('[[r2_buckets]]\nbinding = "SESSIONS_STORE"\nbucket_name = "b"\nendpoint = "r2.example"\n', "r2_buckets.endpoint: must be an http"),
        ('name = \n', "not valid TOML"),
    ],
)
def test_invalid_files_name_the_key(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path, environ={"SESSIONS_SHARED_SECRET": NAMESPACE})
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_env_section(tmp_path):
    with pytest.raises(ConfigError, match=r"no \[env.nope\] section"):
        load_settings(config_file=EXAMPLES / "production.toml", env_name="nope", environ=SECRETS)


def test_environment_store_and_domain():
    settings = load_settings(environ={"CLOUDSESSION_STORE": "s3://bucket/some/prefix", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "API_DOMAIN": "share.example.com"})
    assert (settings.store.backend, settings.store.bucket, settings.store.prefix, settings.store.endpoint) == ("s3", "bucket", "some/prefix/", "http://127.0.0.1:9")
    assert settings.public_url == "https://share.example.com"
    with pytest.raises(ConfigError, match="unsupported scheme"):
        load_settings(environ={"CLOUDSESSION_STORE": "ftp://x"})


@pytest.mark.parametrize("bad", ["11111111-1111-1111-1111-111111111111", "not-a-uuid", "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}"])
def test_invalid_namespace_is_a_startup_error_naming_the_variable(tmp_path, bad):
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsession", "serve", "--data-dir", str(tmp_path), "--port", "0"],
        env={"SESSIONS_SHARED_SECRET": bad, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "SESSIONS_SHARED_SECRET" in proc.stderr and bad not in proc.stderr


def test_check_config_redacts_secrets(tmp_path):
    env = {"SESSIONS_SHARED_SECRET": NAMESPACE, "SESSIONS_RPC_SHARED_KEY": "super-secret-key", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "cloudsession", "check-config", "--data-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["shared_secret"] == "<set>" and shown["rpc_shared_key"] == "<set>"
    assert NAMESPACE not in proc.stdout and "super-secret-key" not in proc.stdout


def test_serve_with_no_environment_uses_embedded_defaults(tmp_path):
    """`cloudsession serve` with no configuration at all: the data dir defaults to
    ~/.local/share/cloudsession, a dev namespace is generated once, the store is the filesystem."""
    home = tmp_path / "home"
    server = ServerProcess(home / ".local" / "share" / "cloudsession", pass_data_dir=False)
    server.env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    server.start()
    try:
        req = urllib.request.Request(server.url + "/api/share", data=b'{"sessionID":"ses_defaults000001"}', headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            first = json.loads(resp.read())
        assert first["url"] == f"http://127.0.0.1:{server.port}/share/ts000001"
    finally:
        server.stop()
    assert "development namespace" in server.log()
    namespace_file = home / ".local" / "share" / "cloudsession" / "dev-namespace"
    assert (home / ".local" / "share" / "cloudsession" / "store" / "objects" / "share" / "ts000001.obj").exists()
    assert namespace_file.stat().st_mode & 0o777 == 0o600
    # The namespace survives a restart, so secrets stay the same.
    server.start()
    try:
        req = urllib.request.Request(server.url + "/api/share", data=b'{"sessionID":"ses_defaults000001"}', headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            assert json.loads(resp.read())["secret"] == first["secret"]
    finally:
        server.stop()


def test_access_log_has_no_query_strings(tmp_path):
    server = ServerProcess(tmp_path / "data", env={"CLOUDSESSION_LOG_LEVEL": "INFO"}).start()
    try:
        urllib.request.urlopen(server.url + "/healthz?token=s3cr3t-read-token").read()
    finally:
        server.stop()
    log = server.log()
    assert '"GET /healthz" 200' in log and "s3cr3t-read-token" not in log


def test_s3_store_requires_an_explicit_namespace(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsession", "serve", "--data-dir", str(tmp_path), "--port", "0"],
        env={"CLOUDSESSION_STORE": "s3://bucket", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2 and "SESSIONS_SHARED_SECRET is required with the s3 store" in proc.stderr
    assert not (tmp_path / "dev-namespace").exists()


def test_a_redis_password_is_refused_in_the_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[vars]\nREDIS_URL = "redis://:hunter2@127.0.0.1:6379/0"\n')
    with pytest.raises(ConfigError, match="REDIS_URL holds a password") as caught:
        load_settings(config_file=path, environ={})
    assert "hunter2" not in str(caught.value)
    path.write_text('[vars]\nREDIS_URL = "redis://127.0.0.1:6379/0"\n')
    assert load_settings(config_file=path, environ={}).redis_url is not None
