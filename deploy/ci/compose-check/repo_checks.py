"""The checks of deploy/ci/validate-compose that need the repository, not just Compose.

    python repo_checks.py --root REPO --schema compose-spec.json --projects DIR

DIR holds the projects nectar-compose-check resolved (default.json, all.json, one per
profile). Checks, each problem printed on its own line (exit status 1 if any):

- docker-compose.yml against the Compose Specification JSON schema (compose-go's copy, the
  version compose-check is built with), independently of compose-go's own validation;
- the Nectar services: each runs a binary the workspace builds and the Dockerfile ships, all
  from the one image; its config file and every NECTAR_* variable (environment and env files)
  only uses sections of its default.toml and known keys, and the file repeats no default;
  processors have a unique instance id; the healthcheck probes the admin port; the stop grace
  period covers a sink's shutdown timeout; no secret is set in the compose file itself;
- secrets: every env file under deploy/compose/secrets/ is gitignored, its .example is not;
- topics: create-topics.sh, run against a stub of kafka-topics.sh, creates every topic of
  topics.conf, and topics.conf has every topic the services read and write;
- Prometheus: one job per Nectar service at its admin port, the rule files are mounted from
  files that exist; Grafana: the data source points at the Prometheus service, the dashboard
  provider reads a directory mounted from the repository's dashboards, which are JSON;
- published ports bind to 127.0.0.1 only, every long-running service has a memory limit;
- the Dockerfile: cargo-chef prepare/cook, a locked release build of exactly the workspace
  binaries it ships, pinned base images, OCI labels, a runtime stage without compilers or
  build tools that runs as a non-root numeric user, no secrets in ARG/ENV;
- .dockerignore keeps what the build needs (every workspace member, Cargo.lock, the schemas)
  and drops target/ and .git.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

COMPOSE_FILE = "docker-compose.yml"
DOCKERFILE = "deploy/docker/Dockerfile"
SECRETS_DIR = "deploy/compose/secrets"
CREATE_TOPICS = "deploy/helm/nectar/files/create-topics.sh"
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "CREDENTIALS", "API_KEY", "WEBHOOK_URL")
# Packages and files a runtime image must not contain.
BUILD_TOOLS = re.compile(
    r"^(build-essential|gcc(-\d+)?|g\+\+(-\d+)?|clang(-\d+)?|cmake|make|pkg-config|pkgconf|"
    r"cargo|rustc|rustup|perl|golang(-go)?|.*-dev)$"
)


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.checks = 0

    def check(self, ok: bool, message: str) -> bool:
        self.checks += 1
        if not ok:
            self.items.append(message)
        return ok


# ---------------------------------------------------------------------------- the workspace


@dataclass
class Package:
    name: str
    dir: Path
    bins: set[str] = field(default_factory=set)

    @property
    def defaults(self) -> dict | None:
        path = self.dir / "default.toml"
        return tomllib.loads(path.read_text()) if path.exists() else None


def workspace(root: Path) -> dict[str, Package]:
    """Every member package with the binaries Cargo builds for it (explicit [[bin]] targets
    plus the automatic src/main.rs and src/bin/*.rs ones)."""
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    packages = {}
    for member in manifest["workspace"]["members"]:
        d = root / member
        cargo = tomllib.loads((d / "Cargo.toml").read_text())
        pkg = Package(cargo["package"]["name"], d)
        explicit = cargo.get("bin", [])
        paths = {b.get("path") for b in explicit}
        pkg.bins |= {b["name"] for b in explicit}
        if cargo["package"].get("autobins", True):
            if (d / "src/main.rs").exists() and "src/main.rs" not in paths:
                pkg.bins.add(pkg.name)
            for f in sorted((d / "src/bin").glob("*.rs")):
                if f"src/bin/{f.name}" not in paths:
                    pkg.bins.add(f.stem)
        packages[pkg.name] = pkg
    return packages


@functools.cache
def _fields_of(d: Path) -> frozenset[str]:
    pattern = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?([a-z_][a-z0-9_]*)\s*:\s*[A-Za-z&(\[]", re.M)
    names: set[str] = set()
    for f in d.rglob("*.rs"):
        names |= set(pattern.findall(f.read_text(errors="replace")))
    return frozenset(names)


def rust_field_names(dirs: list[Path]) -> set[str]:
    """Struct field names of the Rust sources under `dirs`: the keys a config can have beyond
    those its default.toml shows (a coarse net for typos, not a parser)."""
    return set().union(*(_fields_of(d) for d in dirs))


def flatten(table: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out |= flatten(v, prefix + (k,))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                out |= flatten(item, prefix + (k,))
        else:
            out[prefix + (k,)] = v
    return out


# ---------------------------------------------------------------------------- the Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, instructions joined over line continuations;
    heredoc bodies are kept with the instruction that opens them."""
    lines = path.read_text().splitlines()
    args: dict[str, str] = {}
    stages: list[Stage] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                continue
            line = line[:-1] + " " + nxt.strip()
        m = re.search(r"<<-?'?\"?(\w+)'?\"?", line)
        if m and line.split()[0].upper() in ("RUN", "COPY"):
            body = []
            while i < len(lines) and lines[i] != m.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            line += "\n" + "\n".join(body)
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = parts[0]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and keyword == "ARG":
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def stage_args(stage: Stage) -> dict[str, str]:
    out = {}
    for kw, rest in stage.instructions:
        if kw == "ARG":
            k, _, v = rest.partition("=")
            out[k.strip()] = v.strip().strip('"')
    return out


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def pinned_image(ref: str) -> str | None:
    """Why `ref` is not pinned, or None."""
    if "@sha256:" in ref:
        return None
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return "no tag"
    if tag == "latest" or not re.search(r"\d", tag):
        return f"tag {tag!r} names no version"
    return None


# Files the runtime stage writes from heredocs: path in the image -> contents.
shipped_files: dict[str, str] = {}


def check_dockerfile(root: Path, ws: dict[str, Package], p: Problems) -> set[str]:
    """Returns the binaries the image ships."""
    path = root / DOCKERFILE
    args, stages = dockerfile(path)
    where = DOCKERFILE
    if not p.check(len(stages) >= 2, f"{where}: expected a build stage and a runtime stage"):
        return set()
    for st in stages:
        ref = expand(st.base, args)
        if ref in {s.name for s in stages}:
            continue
        why = pinned_image(ref)
        p.check(why is None, f"{where}: base image {ref} of stage {st.name or '?'}: {why}; pin a version")

    everything = "\n".join(f"{kw} {rest}" for st in stages for kw, rest in st.instructions)
    p.check(re.search(r"cargo chef prepare\b", everything) is not None, f"{where}: no `cargo chef prepare`")
    p.check(
        re.search(
            r"cargo chef cook\b[^\n]*--release[^\n]*--locked|cargo chef cook\b[^\n]*--locked[^\n]*--release", everything
        )
        is not None,
        f"{where}: no `cargo chef cook --release --locked` (the cached dependency layer)",
    )
    build = [rest for st in stages for kw, rest in st.instructions if kw == "RUN" and re.search(r"cargo build\b", rest)]
    p.check(
        any("--release" in b and "--locked" in b and "--bins" in b for b in build),
        f"{where}: no `cargo build --release --locked --bins`",
    )

    build_stage = next(
        (st for st in stages if any(kw == "RUN" and "cargo build" in r for kw, r in st.instructions)), None
    )
    shipped: set[str] = set()
    if p.check(build_stage is not None, f"{where}: no stage runs cargo build"):
        sargs = stage_args(build_stage)
        packages = sargs.get("NECTAR_PACKAGES", "").split()
        shipped = set(sargs.get("NECTAR_BINARIES", "").split())
        p.check(
            bool(packages) and bool(shipped),
            f"{where}: ARG NECTAR_PACKAGES and NECTAR_BINARIES must list what is built",
        )
        for pkg in packages:
            p.check(pkg in ws, f"{where}: NECTAR_PACKAGES names {pkg}, which is not a workspace package")
        buildable = set().union(*(ws[pkg].bins for pkg in packages if pkg in ws)) if packages else set()
        for b in sorted(shipped - buildable):
            p.check(False, f"{where}: NECTAR_BINARIES ships {b}, which none of NECTAR_PACKAGES builds")
        for b in sorted(buildable - shipped):
            p.check(False, f"{where}: {b} is built (a binary of NECTAR_PACKAGES) but not in NECTAR_BINARIES")

    runtime = stages[-1]
    rt_base = expand(runtime.base, args)
    p.check(
        not re.match(r"(docker\.io/)?(library/)?(rust|buildpack-deps)[:@]", rt_base)
        and rt_base not in {st.name for st in stages},
        f"{where}: the runtime stage is based on {rt_base}, a build image or stage",
    )
    users = [rest.strip() for kw, rest in runtime.instructions if kw == "USER"]
    if p.check(bool(users), f"{where}: the runtime stage has no USER (it would run as root)"):
        user = users[-1].split(":")[0]
        p.check(
            user.isdigit() and int(user) != 0,
            f"{where}: the runtime stage's USER {users[-1]} must be a numeric, non-root uid (runAsNonRoot checks it)",
        )
    for kw, rest in runtime.instructions:
        if kw == "RUN":
            for m in re.finditer(r"apt-get install ([^&;|]*)", rest):
                for word in m.group(1).split():
                    if not word.startswith("-"):
                        p.check(
                            not BUILD_TOOLS.match(word), f"{where}: the runtime stage installs {word}, a build tool"
                        )
            without_installs = re.sub(r"apt-get install [^&;|]*", "", rest)
            p.check(
                not re.search(r"\b(cargo|rustc|gcc|cc|make|cmake)\s", without_installs),
                f"{where}: the runtime stage runs a compiler or build tool: {rest[:80]}",
            )
        if kw == "COPY":
            m = re.search(r"--from=(\S+)", rest)
            if m:
                src = rest.split()[-2] if len(rest.split()) >= 2 else ""
                p.check(
                    "cargo" not in src and "rustup" not in src,
                    f"{where}: the runtime stage copies the toolchain ({src})",
                )
    labels = " ".join(rest for kw, rest in runtime.instructions if kw == "LABEL")
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        p.check(f"org.opencontainers.image.{key}=" in labels, f"{where}: no org.opencontainers.image.{key} label")
    for st in stages:
        for kw, rest in st.instructions:
            if kw in ("ARG", "ENV"):
                name = re.split(r"[=\s]", rest.strip(), maxsplit=1)[0]
                p.check(
                    not any(w in name.upper() for w in SECRET_WORDS),
                    f"{where}: {kw} {name} looks like a secret; secrets come at run time, never into the image",
                )
    p.check(
        any(kw == "CMD" or kw == "ENTRYPOINT" for kw, _ in runtime.instructions),
        f"{where}: the runtime stage has neither CMD nor ENTRYPOINT",
    )
    for kw, rest in runtime.instructions:
        m = re.match(r"(?:--\S+\s+)*<<-?'?(\w+)'?\s+(\S+)\n(.*)", rest, re.S)
        if kw == "COPY" and m:
            shipped_files[m.group(2)] = m.group(3)
    return shipped


def check_healthcheck_script(p: Problems) -> None:
    """nectar-healthcheck (a heredoc of the Dockerfile) against a local HTTP server: 0 for a
    200 from /readyz, non-zero for a 503 and for a closed port."""
    script = shipped_files.get("/usr/local/bin/nectar-healthcheck")
    if not p.check(
        script is not None, f"{DOCKERFILE}: the runtime stage does not write /usr/local/bin/nectar-healthcheck"
    ):
        return
    import http.server
    import socket
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            try:
                self.send_response(200 if self.path == "/readyz" else 503)
                self.end_headers()
                self.wfile.write(b"{}")
            except ConnectionError:
                pass  # the script hangs up once it has the status line

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.HTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client hanging up early is the script's normal behaviour

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    port = server.server_address[1]
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(script)
        f.flush()
        run = lambda *a: subprocess.run(
            ["bash", f.name, *map(str, a)], capture_output=True, timeout=10
        ).returncode  # noqa: E731
        p.check(run(port) == 0, "nectar-healthcheck: exits non-zero for a 200 from /readyz")
        p.check(run(port, "/other") != 0, "nectar-healthcheck: exits 0 for a 503")
        p.check(run(closed) != 0, "nectar-healthcheck: exits 0 for a closed port")
    server.shutdown()


# ---------------------------------------------------------------------------- .dockerignore


def ignore_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore pattern (Go filepath.Match plus `**`) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def docker_ignored(path: str, patterns: list[tuple[re.Pattern, bool]]) -> bool:
    """Docker's MatchesOrParentMatches: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    matched = False
    for regex, negated in patterns:
        if any(regex.match(pre) for pre in prefixes):
            matched = not negated
    return matched


def check_dockerignore(root: Path, ws: dict[str, Package], p: Problems) -> None:
    path = root / ".dockerignore"
    if not p.check(path.exists(), ".dockerignore: missing (the build context would include target/ and .git)"):
        return
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").lstrip("/"))
        patterns.append((ignore_regex(pat), negated))
    for excluded in ("target", ".git", "deploy/local"):
        p.check(docker_ignored(excluded, patterns), f".dockerignore: {excluded} is sent to the Docker build")
    needed = ["Cargo.toml", "Cargo.lock", "schemas/avro/event.avsc"]
    for pkg in ws.values():
        rel = pkg.dir.relative_to(root)
        needed.append(f"{rel}/Cargo.toml")
        cargo = tomllib.loads((pkg.dir / "Cargo.toml").read_text())
        for kind in ("bin", "test", "bench", "example"):
            needed += [f"{rel}/{t['path']}" for t in cargo.get(kind, []) if "path" in t]
        if "lib" in cargo and "path" in cargo["lib"]:
            needed.append(f"{rel}/{cargo['lib']['path']}")
        for f in ("src/lib.rs", "src/main.rs", "default.toml"):
            if (pkg.dir / f).exists():
                needed.append(f"{rel}/{f}")
    for f in sorted(set(needed)):
        p.check(
            not docker_ignored(os.path.normpath(f), patterns), f".dockerignore: excludes {f}, which the build needs"
        )


# ---------------------------------------------------------------------------- compose


def load_projects(directory: Path) -> dict[str, dict]:
    return {f.stem: json.loads(f.read_text()) for f in sorted(directory.glob("*.json"))}


def check_schema(root: Path, schema_path: Path, p: Problems) -> None:
    schema = json.loads(schema_path.read_text())
    doc = yaml.safe_load((root / COMPOSE_FILE).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    # Values the schema leaves as strings (durations, sizes) are parsed by compose-go.
    errors = sorted(cls(schema).iter_errors(doc), key=lambda e: [str(x) for x in e.absolute_path])
    p.check(not errors, f"{COMPOSE_FILE}: {len(errors)} error(s) against the Compose Specification schema:")
    for e in errors:
        where = ".".join(str(x) for x in e.absolute_path) or "(top)"
        p.items.append(f"{COMPOSE_FILE}: {where}: {e.message}")


def container_file(service: dict, target: str) -> Path | None:
    """The host file or directory bind-mounted at `target` (or at a parent of it)."""
    best = None
    for v in service.get("volumes", []):
        if v.get("type") != "bind":
            continue
        t = v["target"].rstrip("/")
        if target == t or target.startswith(t + "/"):
            if best is None or len(t) > len(best[0]):
                best = (t, Path(v["source"]) / target[len(t) + 1 :] if target != t else Path(v["source"]))
    return best[1] if best else None


def env_sections(env: dict[str, str | None]) -> list[tuple[str, tuple[str, ...]]]:
    return [(k, tuple(k[len("NECTAR_") :].lower().split("__"))) for k in env if k.startswith("NECTAR_") and "__" in k]


def known_key(path: tuple, defaults: dict, fields: set[str]) -> bool:
    """A config key is known when default.toml has it, or its last part is a config field,
    or it sits in a map that a known field holds (kafka.properties.*, ...sources.<name>.*)."""
    flat = flatten(defaults)
    if path in flat:
        return True
    if path[-1] in fields:
        return True
    return len(path) > 2 and path[1] in fields


def effective(key: tuple[str, str], defaults: dict, config: dict, env: dict) -> object:
    """A `section.key` as the service sees it: default.toml, then the file, then NECTAR_*."""
    value = (defaults.get(key[0]) or {}).get(key[1])
    value = (config.get(key[0]) or {}).get(key[1], value)
    return env.get(f"NECTAR_{key[0].upper()}__{key[1].upper()}") or value


def admin_port(defaults: dict, config: dict, env: dict) -> int | None:
    m = re.search(r":(\d+)$", str(effective(("admin", "listen"), defaults, config, env) or ""))
    return int(m.group(1)) if m else None


def duration_secs(text: str | None) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text or ""):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_compose(
    root: Path, projects: dict[str, dict], ws: dict[str, Package], shipped: set[str], p: Problems
) -> dict:
    services = projects["all"]["services"]
    raw = yaml.safe_load((root / COMPOSE_FILE).read_text())
    raw_services = raw.get("services", {})
    bin_pkg = {b: pkg for pkg in ws.values() for b in pkg.bins}
    dockerfile_abs = str((root / DOCKERFILE).resolve())

    nectar = {}
    for name, svc in sorted(services.items()):
        build = svc.get("build")
        if (
            build
            and str(Path(build.get("context", "."), build.get("dockerfile", "Dockerfile")).resolve()) == dockerfile_abs
        ):
            nectar[name] = svc
    p.check(len(nectar) > 0, f"{COMPOSE_FILE}: no service builds {DOCKERFILE}")
    images = {svc.get("image") for svc in nectar.values()}
    p.check(
        len(images) == 1,
        f"{COMPOSE_FILE}: the Nectar services use different images {sorted(map(str, images))}; one image serves them all",
    )

    instance_ids: dict[str, str] = {}
    checked = {}  # the services whose binary is known, with their admin port
    for name, svc in nectar.items():
        where = f"{COMPOSE_FILE}: service {name}"
        cmd = svc.get("command") or []
        if not p.check(bool(cmd), f"{where}: no command naming its binary (the image has no ENTRYPOINT)"):
            continue
        binary = cmd[0]
        if not p.check(binary in bin_pkg, f"{where}: runs {binary}, which no workspace package builds"):
            continue
        p.check(binary in shipped, f"{where}: runs {binary}, which {DOCKERFILE} does not ship (NECTAR_BINARIES)")
        pkg = bin_pkg[binary]
        defaults = pkg.defaults
        if not p.check(defaults is not None, f"{where}: {pkg.dir.relative_to(root)}/default.toml is missing"):
            continue
        sections = set(defaults) | {"log"}  # [log] is optional in every service (LogConfig's defaults)
        src_dirs = [pkg.dir / "src", root / "core/src"]
        if pkg.dir.parent.name == "sinks":
            src_dirs.append(root / "sinks/runtime/src")
        fields = rust_field_names(src_dirs)
        env = svc.get("environment") or {}

        # The config file.
        config: dict = {}
        conf_path = env.get("NECTAR_CONFIG")
        if conf_path:
            host = container_file(svc, conf_path)
            if p.check(
                host is not None and host.is_file(),
                f"{where}: NECTAR_CONFIG={conf_path} is not a file mounted from the repository",
            ):
                rel = host.relative_to(root)
                try:
                    config = tomllib.loads(host.read_text())
                except tomllib.TOMLDecodeError as e:
                    p.check(False, f"{rel}: not valid TOML: {e}")
                flat_defaults = flatten(defaults)
                for key, value in flatten(config).items():
                    dotted = ".".join(key)
                    p.check(
                        key[0] in sections,
                        f"{rel}: [{key[0]}] is not a section of {pkg.dir.relative_to(root)}/default.toml",
                    )
                    p.check(known_key(key, defaults, fields), f"{rel}: {dotted} is not a known key of {binary}")
                    p.check(
                        flat_defaults.get(key, object()) != value,
                        f"{rel}: {dotted} = {value!r} repeats the default; keep only what differs",
                    )
        else:
            p.check(
                False,
                f"{where}: no NECTAR_CONFIG: mount its deploy/compose/config/{name}.toml and point NECTAR_CONFIG at it",
            )

        # Every NECTAR_<SECTION>__<KEY>, from `environment` and the env files (their .example in CI).
        for var, path in env_sections(env):
            p.check(
                path[0] in sections,
                f"{where}: {var}: [{path[0]}] is not a section of {pkg.dir.relative_to(root)}/default.toml",
            )
            p.check(
                known_key(path, defaults, fields), f"{where}: {var}: {'.'.join(path)} is not a known key of {binary}"
            )
        raw_env = (raw_services.get(name) or {}).get("environment") or {}
        raw_keys = raw_env.keys() if isinstance(raw_env, dict) else [e.split("=", 1)[0] for e in raw_env]
        for var in raw_keys:
            p.check(
                not any(w in var.upper() for w in SECRET_WORDS),
                f"{where}: {var} is set in {COMPOSE_FILE}; secrets go in {SECRETS_DIR}/{name}.env",
            )

        if pkg.dir.parent.name == "processors":
            iid = env.get("NECTAR_PROCESSOR__INSTANCE_ID")
            if p.check(bool(iid), f"{where}: a processor needs NECTAR_PROCESSOR__INSTANCE_ID (its transactional id)"):
                p.check(iid not in instance_ids, f"{where}: instance id {iid} is also {instance_ids.get(iid)}'s")
                instance_ids[iid] = name

        port = admin_port(defaults, config, env)
        hc = (svc.get("healthcheck") or {}).get("test") or []
        if p.check(bool(hc), f"{where}: no healthcheck"):
            p.check(
                str(port) in " ".join(hc[1:]), f"{where}: the healthcheck {hc} does not probe the admin port {port}"
            )
        if pkg.dir.parent.name == "sinks":
            # 20 s: SinkConfig's default when default.toml does not set it.
            shutdown_ms = int(effective(("sink", "shutdown_timeout_ms"), defaults, config, env) or 20000)
            grace = duration_secs(svc.get("stop_grace_period")) or 10
            p.check(
                grace * 1000 > shutdown_ms,
                f"{where}: stop_grace_period {grace:g}s does not cover sink.shutdown_timeout_ms {shutdown_ms}",
            )
        checked[name] = {**svc, "_port": port, "_binary": binary}

    for name, svc in services.items():
        for f in svc.get("env_file") or []:
            path = Path(f["path"].removesuffix(".example"))
            if SECRETS_DIR in str(path):
                rel = path.relative_to(root)
                p.check(git_ignored(root, rel), f"{rel}: not gitignored; secrets must never be committed")
                p.check(
                    not git_ignored(root, Path(str(rel) + ".example")),
                    f"{rel}.example: gitignored; it must be committed",
                )
                # compose-go omits `required` when it is true.
                if f.get("required", True):
                    p.check(
                        bool(svc.get("profiles")),
                        f"{COMPOSE_FILE}: service {name} requires the secret {rel} but has no profile:"
                        " a plain `docker compose up` would need it",
                    )

    for name, svc in services.items():
        where = f"{COMPOSE_FILE}: service {name}"
        for port in svc.get("ports") or []:
            p.check(
                port.get("host_ip") in ("127.0.0.1", "::1"),
                f"{where}: port {port.get('published')} is published on every interface; bind it to 127.0.0.1",
            )
        if (svc.get("restart") or "no") != "no":
            limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
            p.check(bool(limits.get("memory")), f"{where}: no deploy.resources.limits.memory")
    return checked


def git_ignored(root: Path, rel: Path) -> bool:
    r = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--no-index", str(rel)], capture_output=True)
    return r.returncode == 0


# ---------------------------------------------------------------------------- topics


def check_topics(root: Path, projects: dict, nectar: dict, ws: dict[str, Package], p: Problems) -> None:
    services = projects["all"]["services"]
    topics_svc = next(
        (s for s in services.values() if any("create-topics.sh" in str(x) for x in (s.get("entrypoint") or []))), None
    )
    if not p.check(topics_svc is not None, f"{COMPOSE_FILE}: no service runs create-topics.sh"):
        return
    conf_target = (topics_svc.get("command") or [""])[-1]
    conf = container_file(topics_svc, conf_target)
    if not p.check(
        conf is not None and conf.is_file(),
        f"{COMPOSE_FILE}: the topics service's {conf_target} is not mounted from a file",
    ):
        return
    declared = {}
    for line in conf.read_text().splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            declared[parts[0]] = parts[1:]

    # Run the script against a stub kafka-topics.sh that records what it is asked to create.
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp, "kafka-topics.sh")
        state = Path(tmp, "topics")
        state.write_text("")
        stub.write_text(
            "#!/usr/bin/env bash\n"
            f"state={shlex.quote(str(state))}\n"
            'if [[ " $* " == *" --list "* ]]; then cat "$state"; exit 0; fi\n'
            'args=("$@"); for ((i = 0; i < ${#args[@]}; i++)); do [[ ${args[i]} == --topic ]] && t=${args[i+1]}; done\n'
            'printf "%s\\n" "$t" >>"$state"; printf "%s\\n" "$*" >>"$state.calls"\n'
        )
        stub.chmod(0o755)
        r = subprocess.run(
            ["bash", str(root / CREATE_TOPICS), str(conf)],
            env={**os.environ, "KAFKA_TOPICS_CMD": str(stub)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        last = (r.stderr.strip().splitlines() or [""])[-1]
        ok = p.check(
            r.returncode == 0, f"{CREATE_TOPICS}: fails on {conf.relative_to(root)} (stub kafka-topics.sh): {last}"
        )
        calls = Path(str(state) + ".calls").read_text().splitlines() if Path(str(state) + ".calls").exists() else []
        created = {}
        for c in calls:
            a = c.split()
            t = a[a.index("--topic") + 1]
            created[t] = (a[a.index("--partitions") + 1], [a[i + 1] for i, x in enumerate(a) if x == "--config"])
        for t, rest in declared.items() if ok else ():
            want = (rest[0] if rest else "?", rest[1].split(",") if len(rest) > 1 else [])
            p.check(
                created.get(t) == want, f"{CREATE_TOPICS}: {t} created as {created.get(t)}, {conf.name} says {want}"
            )

    # Every topic a Nectar service reads or writes is declared (route creates delivery topics
    # itself, but the sinks start before the first event is routed).
    for name, svc in nectar.items():
        pkg = next(pk for pk in ws.values() if svc["_binary"] in pk.bins)
        d = pkg.defaults or {}
        wanted = []
        if pkg.dir.parent.name == "sinks":
            sink = d["sink"]["name"]
            wanted += [
                d["sink"].get("topic", f"nectar.deliver.{sink}"),
                d["sink"].get("dlq_topic", f"nectar.dlq.sink-{sink}"),
            ]
        else:
            topics = dict(d.get("topics", {}))
            topics.pop("deliver_prefix", None)
            topics.pop("create_partitions", None)
            wanted += [v for v in topics.values() if isinstance(v, str)]
            wanted += [
                v for v in [(d.get("output") or {}).get("topic"), (d.get("processor") or {}).get("dlq_topic")] if v
            ]
        for t in wanted:
            p.check(t in declared, f"{conf.relative_to(root)}: has no {t}, which {name} uses")


# ---------------------------------------------------------------------------- Prometheus, Grafana


def check_monitoring(root: Path, projects: dict, nectar: dict, p: Problems) -> None:
    services = projects["all"]["services"]
    prom_name = next((n for n, s in services.items() if "prom/prometheus" in (s.get("image") or "")), None)
    if not p.check(prom_name is not None, f"{COMPOSE_FILE}: no Prometheus service"):
        return
    prom = services[prom_name]
    flags = " ".join(prom.get("command") or [])
    m = re.search(r"--config\.file=(\S+)", flags)
    conf_target = m.group(1) if m else "/etc/prometheus/prometheus.yml"
    conf_path = container_file(prom, conf_target)
    if not p.check(
        conf_path is not None and conf_path.is_file(),
        f"{COMPOSE_FILE}: {prom_name}: {conf_target} is not mounted from a file",
    ):
        return
    rel = conf_path.relative_to(root)
    conf = yaml.safe_load(conf_path.read_text())
    jobs = {}
    for job in conf.get("scrape_configs") or []:
        p.check(job["job_name"] not in jobs, f"{rel}: job {job['job_name']} twice")
        targets = set()
        for sc in job.get("static_configs") or []:
            targets |= set(sc.get("targets") or [])
        for sd in job.get("dns_sd_configs") or []:
            targets |= {f"{n}:{sd.get('port')}" for n in sd.get("names") or []}
        jobs[job["job_name"]] = targets
    for name, svc in nectar.items():
        job = f"nectar-{name}"
        if p.check(job in jobs, f"{rel}: no job {job} for the Nectar service {name}"):
            p.check(
                jobs[job] == {f"{name}:{svc['_port']}"},
                f"{rel}: job {job} scrapes {sorted(jobs[job])}, not {name}:{svc['_port']} (its admin port)",
            )
    for job in jobs:
        if job.startswith("nectar-"):
            p.check(
                job.removeprefix("nectar-") in nectar, f"{rel}: job {job} scrapes no Nectar service of {COMPOSE_FILE}"
            )
    rule_files = conf.get("rule_files") or []
    p.check(bool(rule_files), f"{rel}: no rule_files (deploy/observability/prometheus/alerts.yml)")
    for rf in rule_files:
        host = container_file(prom, rf)
        p.check(
            host is not None and host.is_file(), f"{rel}: rule file {rf} is not mounted from a file of the repository"
        )
        if host is not None and host.is_file():
            p.check(
                host.relative_to(root).as_posix().startswith("deploy/observability/"),
                f"{rel}: rule file {rf} comes from {host.relative_to(root)}, not deploy/observability/",
            )
            p.check(isinstance(yaml.safe_load(host.read_text()), dict), f"{host.relative_to(root)}: not a YAML mapping")

    graf_name = next((n for n, s in services.items() if "grafana/grafana" in (s.get("image") or "")), None)
    if not p.check(graf_name is not None, f"{COMPOSE_FILE}: no Grafana service"):
        return
    graf = services[graf_name]
    ds_dir = container_file(graf, "/etc/grafana/provisioning/datasources")
    db_dir = container_file(graf, "/etc/grafana/provisioning/dashboards")
    for label, d in (("datasources", ds_dir), ("dashboards", db_dir)):
        p.check(
            d is not None and d.is_dir() and any(d.glob("*.yml")),
            f"{COMPOSE_FILE}: {graf_name}: /etc/grafana/provisioning/{label} is not mounted from a directory of .yml files",
        )
    if ds_dir is not None and ds_dir.is_dir():
        urls = [
            ds.get("url", "")
            for f in ds_dir.glob("*.yml")
            for ds in (yaml.safe_load(f.read_text()) or {}).get("datasources", [])
            if ds.get("type") == "prometheus"
        ]
        p.check(
            f"http://{prom_name}:9090" in urls,
            f"{ds_dir.relative_to(root)}: no Prometheus data source at http://{prom_name}:9090",
        )
    if db_dir is not None and db_dir.is_dir():
        for f in sorted(db_dir.glob("*.yml")):
            for prov in (yaml.safe_load(f.read_text()) or {}).get("providers", []):
                path = (prov.get("options") or {}).get("path", "")
                host = container_file(graf, path)
                frel = f.relative_to(root)
                if p.check(
                    host is not None and host.is_dir(),
                    f"{frel}: provider {prov.get('name')} reads {path}, which is not mounted from a directory",
                ):
                    hrel = host.relative_to(root).as_posix()
                    p.check(
                        hrel == "deploy/observability/grafana/dashboards",
                        f"{frel}: provider {prov.get('name')} reads {hrel}, not deploy/observability/grafana/dashboards",
                    )
                    dashboards = sorted(host.glob("*.json"))
                    p.check(bool(dashboards), f"{hrel}: no dashboard (.json) to provision")
                    for dash in dashboards:
                        try:
                            p.check(
                                isinstance(json.loads(dash.read_text()).get("panels"), list),
                                f"{dash.relative_to(root)}: no panels",
                            )
                        except json.JSONDecodeError as e:
                            p.check(False, f"{dash.relative_to(root)}: not JSON: {e}")
    home = (graf.get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        host = container_file(graf, home)
        p.check(
            host is not None and host.is_file(),
            f"{COMPOSE_FILE}: {graf_name}: the home dashboard {home} is not mounted from a file",
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--schema", type=Path, required=True)
    ap.add_argument("--projects", type=Path, required=True)
    a = ap.parse_args()
    root = a.root.resolve()
    p = Problems()
    ws = workspace(root)
    projects = load_projects(a.projects)
    for needed in ("default", "all"):
        if needed not in projects:
            print(f"repo-checks: no {needed}.json in {a.projects}", file=sys.stderr)
            return 2

    check_schema(root, a.schema, p)
    shipped = check_dockerfile(root, ws, p)
    check_healthcheck_script(p)
    check_dockerignore(root, ws, p)
    nectar = check_compose(root, projects, ws, shipped, p)
    check_topics(root, projects, nectar, ws, p)
    check_monitoring(root, projects, nectar, p)

    for item in p.items:
        print(f"problem: {item}")
    print(
        json.dumps(
            {
                "checks": p.checks,
                "problems": len(p.items),
                "nectar_services": len(nectar),
                "services": len(projects["all"]["services"]),
                "profile_sets": sorted(projects),
            }
        )
    )
    return 1 if p.items else 0


if __name__ == "__main__":
    sys.exit(main())
