#!/usr/bin/env bash
# Installs (once) the command-line tools some tests run as independent checks: `openssl`
# reads the keys `tongban certs init` writes, serves as the tests' RFC 3161 time-stamping
# authority (`ts -reply`) and verifies its tokens (`ts -verify`); `etcd` (etcd-server) is
# the real etcd the shared-store tests run against, and `protoc` (protobuf-compiler) is
# what the etcd-client crate needs to build; `ip` (iproute2) makes the network namespace
# that a partition test puts etcd in. From Debian's packages when missing.
set -euo pipefail
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
