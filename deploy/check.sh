#!/usr/bin/env bash
# Offline checks of the deployment and observability files under deploy/.
# Run from anywhere: bash deploy/check.sh
#
# Installs what it lacks: promtool (Debian's package "prometheus", through
# apt-get) and kubernetes-validate and checkov (PyPI, pinned below, into the
# current Python environment). Prints one line per check and exits non-zero
# if any check fails. The gateway.toml files are checked against the real
# config parser by the Rust test tests/deploy_files.rs (cargo test).
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
# Native sidecars (initContainers with restartPolicy: Always) need 1.29.
KUBERNETES_VERSION=1.29.0

cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- tools --------------------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

pip_wanted=()
python3 -c 'import kubernetes_validate' 2>/dev/null ||
  pip_wanted+=("kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}")
python3 -c 'import checkov' 2>/dev/null ||
  pip_wanted+=("checkov==${CHECKOV_VERSION}")
if [ "${#pip_wanted[@]}" -gt 0 ]; then
  echo "installing ${pip_wanted[*]} (PyPI)"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check "${pip_wanted[@]}"
fi

# Through the interpreter, so that a bin directory missing from PATH does not matter.
kubernetes_validate() { python3 -m kubernetes_validate "$@"; }
checkov() { python3 -m checkov.main "$@"; }

echo "tools: $(promtool --version 2>&1 | head -n1)," \
  "kubernetes-validate $(kubernetes_validate --version)," \
  "checkov $(checkov --version)," \
  "kubectl $(command -v kubectl >/dev/null 2>&1 && kubectl version --client 2>/dev/null | head -n1 || echo 'not found')"

# --- helpers --------------------------------------------------------------------
failures=0
skipped=0

# check NAME COMMAND...: one line per check; the command's output only on failure.
check() {
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    printf 'ok    %s\n' "$name"
  else
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$work/out"
    failures=$((failures + 1))
  fi
}

skip() {
  printf 'skip  %s\n' "$1"
  skipped=$((skipped + 1))
}

# Drops ServiceMonitor documents (a CRD of the Prometheus Operator: the
# Kubernetes schemas do not know it) from a manifest; writes the rest to $2.
drop_crds() {
  python3 - "$1" "$2" <<'EOF'
import sys, yaml
src, dst = sys.argv[1], sys.argv[2]
with open(src) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
kept = [d for d in docs if d.get("kind") != "ServiceMonitor"]
with open(dst, "w") as f:
    yaml.safe_dump_all(kept, f, sort_keys=False)
EOF
}

# Strict schema validation; any warning (an unknown kind, say) is a failure too.
validate_manifest() {
  local file=$1 filtered out
  filtered="$work/filtered-$(basename "$(dirname "$file")")-$(basename "$file")"
  drop_crds "$file" "$filtered"
  out=$(kubernetes_validate --strict --quiet -k "$KUBERNETES_VERSION" "$filtered" 2>&1) || {
    echo "$out"
    return 1
  }
  if [ -n "$out" ]; then
    echo "$out"
    return 1
  fi
}

render() {
  kubectl kustomize "$1" >"$2"
}

parse_toml() {
  python3 -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$1"
}

# Every PromQL expression of the dashboard becomes a recording rule, so that
# promtool parses it. Grafana's variables get values PromQL accepts.
dashboard_rules() {
  python3 - "$1" "$2" <<'EOF'
import json, re, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src) as f:
    dashboard = json.load(f)

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

builtins = {"__rate_interval": "5m", "__interval": "5m", "__range": "5m"}
def substitute(expr):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return builtins.get(name, ".+")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)

problems, rules = [], []
for p in panels(dashboard.get("panels", [])):
    if p.get("type") == "row":
        continue
    title = p.get("title", "?")
    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        problems.append(f"panel {title!r}: datasource is not ${{DS_PROMETHEUS}}")
    targets = p.get("targets", [])
    if not targets:
        problems.append(f"panel {title!r}: no queries")
    for t in targets:
        if "expr" not in t:
            problems.append(f"panel {title!r}, query {t.get('refId')}: no expr")
            continue
        rules.append({"record": f"dashboard:panel_{p['id']}_{t.get('refId', 'X')}",
                      "expr": substitute(t["expr"]), "labels": {"panel": title}})
if problems:
    sys.exit("\n".join(problems))
with open(dst, "w") as f:
    json.dump({"groups": [{"name": "grafana-dashboard", "rules": rules}]}, f, indent=2)
print(f"{len(rules)} expressions")
EOF
}

# Debian's promtool is built without Kubernetes service discovery. With such
# a promtool, check the file with each kubernetes_sd_configs replaced by a
# static target: everything else (relabelling, rule files) is still checked.
printf 'scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs: [{role: pod}]\n' >"$work/sd-probe.yml"
if promtool check config "$work/sd-probe.yml" >/dev/null 2>&1; then
  promtool_has_kubernetes_sd=true
else
  promtool_has_kubernetes_sd=false
fi

check_kubernetes_config() {
  local src=$1 dir copy
  if [ "$promtool_has_kubernetes_sd" = true ]; then
    promtool check config "$src"
    return
  fi
  dir="$work/prometheus-kubernetes"
  mkdir -p "$dir"
  cp deploy/prometheus/*.yml "$dir/"
  copy="$dir/$(basename "$src")"
  python3 - "$src" "$copy" <<'EOF'
import sys, yaml
with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
for job in config.get("scrape_configs", []):
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["127.0.0.1:9090"]}]
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
EOF
  promtool check config "$copy"
}

# --- Kubernetes ----------------------------------------------------------------
# ServiceMonitor (a CRD) is left out of kubernetes-validate explicitly: no
# schema of it ships with Kubernetes. checkov still scans it.
for manifest in deploy/kubernetes/*/*.yaml; do
  case "$(basename "$manifest")" in
    kustomization.yaml) continue ;;
    servicemonitor.yaml)
      skip "kubernetes-validate $manifest (ServiceMonitor is a CRD without a Kubernetes schema; checkov scans it)"
      continue
      ;;
  esac
  check "kubernetes-validate --strict -k $KUBERNETES_VERSION $manifest" validate_manifest "$manifest"
done

for config in deploy/kubernetes/*/gateway.toml; do
  check "TOML syntax $config" parse_toml "$config"
done

if command -v kubectl >/dev/null 2>&1; then
  for variant in deploy/kubernetes/*/; do
    variant=${variant%/}
    rendered="$work/$(basename "$variant")-rendered.yaml"
    check "kubectl kustomize $variant" render "$variant" "$rendered"
    if [ -s "$rendered" ]; then
      check "kubernetes-validate --strict -k $KUBERNETES_VERSION (kustomize output of $variant)" \
        validate_manifest "$rendered"
    fi
  done
  checkov_frameworks=(kubernetes kustomize dockerfile secrets)
else
  skip "kubectl kustomize deploy/kubernetes/* (kubectl not found)"
  checkov_frameworks=(kubernetes dockerfile secrets)
fi

# No failed check allowed; every skip is explained where it applies (a
# checkov.io/skipN annotation or a checkov:skip comment).
check "checkov --framework ${checkov_frameworks[*]} -d deploy" \
  checkov --skip-download --quiet --compact --framework "${checkov_frameworks[@]}" -d deploy

# --- Prometheus ------------------------------------------------------------------
check "promtool check rules deploy/prometheus/alerts.yml" \
  promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules deploy/prometheus/alerts_test.yml" \
  promtool test rules deploy/prometheus/alerts_test.yml
check "promtool check config deploy/prometheus/prometheus.yml" \
  promtool check config deploy/prometheus/prometheus.yml
if [ "$promtool_has_kubernetes_sd" = true ]; then
  note=""
else
  note=" (kubernetes_sd_configs replaced by static targets: this promtool lacks Kubernetes discovery)"
fi
check "promtool check config deploy/prometheus/prometheus-kubernetes.yml$note" \
  check_kubernetes_config deploy/prometheus/prometheus-kubernetes.yml

# --- Grafana ---------------------------------------------------------------------
check "dashboard queries extracted from deploy/grafana/chat-gateway.json" \
  dashboard_rules deploy/grafana/chat-gateway.json "$work/dashboard-rules.yml"
if [ -s "$work/dashboard-rules.yml" ]; then
  check "promtool check rules (PromQL of every dashboard panel)" \
    promtool check rules "$work/dashboard-rules.yml"
fi

# --- Container -------------------------------------------------------------------
check "Dockerfile ENTRYPOINT is the exec form" \
  grep -qE '^ENTRYPOINT \["/usr/local/bin/chat-gateway", "serve", "--config", "/etc/chat-gateway/gateway.toml"\]$' \
  deploy/Dockerfile

echo
if [ "$failures" -gt 0 ]; then
  echo "deploy/check.sh: $failures check(s) failed"
  exit 1
fi
if [ "$skipped" -gt 0 ]; then
  echo "deploy/check.sh: all checks passed ($skipped skipped)"
else
  echo "deploy/check.sh: all checks passed"
fi
