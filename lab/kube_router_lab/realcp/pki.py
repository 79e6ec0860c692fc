"""The certificates of one lab run: a CA, the API server's serving certificate, client
certificates for the lab and the control plane's own programs, and the service account
signing key. Made with the openssl command, valid for a day, kept in the run's directory."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "1"


class PkiError(RuntimeError):
    pass


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {proc.stderr.strip()[:300]}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Pair:
        return Pair(self.dir / "ca.crt", self.dir / "ca.key")

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def make_ca(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _key(self.ca.key)
        _openssl("req", "-x509", "-new", "-key", str(self.ca.key), "-days", DAYS,
                 "-subj", "/CN=kube-router-lab-ca", "-out", str(self.ca.cert),
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", str(self.sa_key))
        _openssl("pkey", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub))

    def issue(self, name: str, *, cn: str, org: str = "", ips: tuple[str, ...] = (),
              dns: tuple[str, ...] = (), server: bool = False) -> Pair:
        """A certificate signed by the CA: a client's (CN is the user, O its group) or,
        with ``server``, a serving one for the given addresses and names."""
        pair = Pair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        _key(pair.key)
        csr = self.dir / f"{name}.csr"
        subj = f"/CN={cn}" + (f"/O={org}" if org else "")
        _openssl("req", "-new", "-key", str(pair.key), "-subj", subj, "-out", str(csr))
        ext = self.dir / f"{name}.ext"
        lines = ["basicConstraints=critical,CA:FALSE",
                 "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}"]
        sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca.cert), "-CAkey",
                 str(self.ca.key), "-CAcreateserial", "-days", DAYS, "-extfile", str(ext),
                 "-out", str(pair.cert))
        return pair


def kubeconfig(path: Path, *, server: str, ca: Path, client: Pair, user: str) -> Path:
    """A kubeconfig for ``server`` that authenticates with a client certificate."""
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {client.cert}
    client-key: {client.key}
contexts:
- name: lab
  context: {{cluster: lab, user: {user}}}
current-context: lab
""")
    return path
