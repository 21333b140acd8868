"""Certificates and SuperNode keys for a secure Deployment Engine test, made with ``cryptography``.

A CA, a SuperLink certificate signed by it for 127.0.0.1 / localhost, a second CA that signed
nothing (a SuperNode trusting it must not connect), and one EC key pair per SuperNode in
OpenSSH format, as ``flwr supernode register`` and ``--auth-supernode-private-key`` take them.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Certs:
    ca: Path  # the CA that signed the SuperLink's certificate (SuperNodes' --root-certificates)
    other_ca: Path  # a CA that signed nothing here
    cert: Path  # the SuperLink's certificate and key
    key: Path
    nodes: list[Path]  # private keys; the public key of each is <key>.pub


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    path.chmod(0o600)
    return path


def _cert(subject: str, key, issuer: x509.Name, signer, ca: bool, san: list | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(signer, hashes.SHA256())


def _ca(out: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _cert(cn, key, _name(cn), key, ca=True)
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_certs(folder: Path, nodes: int) -> Certs:
    """Everything a TLS + SuperNode-authentication federation on 127.0.0.1 needs, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(folder / "ca.crt", "fedanchors test CA")
    _ca(folder / "other-ca.crt", "an unrelated CA")
    key = ec.generate_private_key(ec.SECP384R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = _cert("localhost", key, ca_cert.subject, ca_key, ca=False, san=san)
    (folder / "superlink.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keys = []
    for i in range(nodes):
        k = ec.generate_private_key(ec.SECP384R1())
        path = folder / f"supernode{i}"
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()))  # fmt: skip
        path.chmod(0o600)
        pub = k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        path.with_name(path.name + ".pub").write_bytes(pub + b"\n")
        keys.append(path)
    return Certs(folder / "ca.crt", folder / "other-ca.crt", folder / "superlink.pem",
                 _pem_key(key, folder / "superlink.key"), keys)  # fmt: skip
