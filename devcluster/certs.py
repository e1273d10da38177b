"""A throwaway PKI for the test control plane and the test servers: one CA, serving and
client certificates, and self-signed certificates that are their own trust anchor.

Keys are ECDSA P-256 (fast to make); the ServiceAccount signing key too (ES256, which
kube-apiserver accepts); RSA where a peer asks for it (RS256 tokens, service account
keys). Everything is written as PEM files in one folder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=7)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class KeyPair:
    """Paths of a PEM certificate and its private key."""

    cert: Path
    key: Path


def new_key(algorithm: str = "ec") -> PrivateKey:
    """A fresh private key: ECDSA P-256, or RSA 2048 (`algorithm="rsa"`)."""
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """`key` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_key(key: PrivateKey, path: Path) -> None:
    path.write_bytes(key_pem(key))
    path.chmod(0o600)


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


_CA = x509.BasicConstraints(ca=True, path_length=None)
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)
_CRITICAL = (x509.BasicConstraints, x509.KeyUsage)


def _certificate(
    subject: x509.Name,
    key: PrivateKey,
    extensions: Sequence[x509.ExtensionType],
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
) -> x509.Certificate:
    """A certificate for `subject` and `key`'s public key, signed by `issuer` (a CA's
    certificate and key), else by `key` itself (self-signed)."""
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=isinstance(extension, _CRITICAL))
    return builder.sign(signer, hashes.SHA256())


def _alt_names(hosts: tuple[str, ...]) -> list[x509.ExtensionType]:
    """`hosts` as DNS or IP SANs (no extension when there are none)."""
    return [x509.SubjectAlternativeName([_san(h) for h in hosts])] if hosts else []


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(cert: x509.Certificate, key: PrivateKey, pair: KeyPair) -> KeyPair:
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


class CertificateAuthority:
    """A self-signed CA that issues certificates into `folder`."""

    def __init__(self, folder: Path, common_name: str = "hotswap-test-ca") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._key = new_key()
        self._cert = _certificate(_name(common_name), self._key, [_CA, _CA_USAGE])
        self.pair = _write(self._cert, self._key, KeyPair(folder / "ca.crt", folder / "ca.key"))

    @property
    def cert_path(self) -> Path:
        return self.pair.cert

    def issue(
        self,
        name: str,
        common_name: str,
        orgs: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
        client: bool = True,
        server: bool = False,
    ) -> KeyPair:
        """Issue `<name>.crt`/`<name>.key`; `hosts` become DNS or IP SANs."""
        key = new_key()
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        extensions = [
            x509.BasicConstraints(ca=False, path_length=None),
            x509.ExtendedKeyUsage(usages),
            *_alt_names(hosts),
        ]
        cert = _certificate(_name(common_name, orgs), key, extensions, (self._cert, self._key))
        return _write(cert, key, KeyPair(self.folder / f"{name}.crt", self.folder / f"{name}.key"))


def self_signed(
    folder: Path, name: str, hosts: tuple[str, ...] = (), *, algorithm: str = "ec"
) -> KeyPair:
    """A self-signed CA certificate `<name>.crt` (common name `name`) and its key
    `<name>.key` in `folder`: its own trust anchor (SSL_CERT_FILE, a registry's
    rootcertbundle), for TLS on `hosts` (DNS or IP SANs) or to sign tokens
    (`algorithm="rsa"` for RS256)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = new_key(algorithm)
    cert = _certificate(_name(name), key, [_CA, *_alt_names(hosts)])
    return _write(cert, key, KeyPair(folder / f"{name}.crt", folder / f"{name}.key"))


def service_account_keys(folder: Path) -> KeyPair:
    """The ServiceAccount token signing key (`sa.key`) and its public key (`sa.pub`)."""
    key = new_key()
    pair = KeyPair(folder / "sa.pub", folder / "sa.key")
    _write_key(key, pair.key)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pair.cert.write_bytes(pub)
    return pair
