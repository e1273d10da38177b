"""gs:// and az:// URIs and Secrets turned into requests: what each names, and the
errors that name the fix without quoting the credential."""

from __future__ import annotations

import json

import pytest

from devcluster import fake_gcs
from hotswap_runtime.checkpoint.fetch import azure, gcs
from hotswap_runtime.errors import FetchError


def test_gs_media_url_quotes_the_object_name() -> None:
    """gs:// names are literal (as gsutil writes them): every character is quoted once."""
    url = gcs.media_url("gs://models/tiny/v 1%.pt", gcs.ENDPOINT, "shown")
    assert (
        url == "https://storage.googleapis.com/storage/v1/b/models/o/tiny%2Fv%201%25.pt?alt=media"
    )


@pytest.mark.parametrize("uri", ["gs://models", "gs://models/", "gs:///x.pt", "gs://m/x.pt?a=1"])
def test_gs_uri_without_bucket_and_object_is_refused(uri: str) -> None:
    with pytest.raises(FetchError, match=r"is not gs://BUCKET/OBJECT"):
        gcs.media_url(uri, gcs.ENDPOINT, "shown")


@pytest.mark.parametrize("endpoint", ["ftp://host", "storage.example", "http://h/?x=1"])
def test_gs_endpoint_must_be_an_http_url(endpoint: str) -> None:
    with pytest.raises(FetchError, match=r"GCS_ENDPOINT_URL of the Secret is not"):
        gcs.media_url("gs://models/x.pt", endpoint, "shown")


def test_gs_service_account_key_signs_a_token_without_the_network() -> None:
    token = gcs._token(fake_gcs.service_account_key(), "gs://m/x.pt")
    header, claims, _ = token.split(".")
    assert header.startswith("eyJ") and claims


def test_gs_key_that_is_not_a_service_account_is_refused_unquoted() -> None:
    key = json.dumps({"type": "service_account", "private_key": "SECRET-NOT-PEM"})
    for text in (key, "not json SECRET-NOT-PEM"):
        with pytest.raises(FetchError, match=r"is not a service account key") as caught:
            gcs._token(text, "gs://m/x.pt")
        assert "SECRET-NOT-PEM" not in str(caught.value)


def test_az_uri_and_blob_url_locate_account_container_and_blob() -> None:
    secret = {"AZURE_STORAGE_ACCOUNT": "acct"}
    assert azure._locate("az://models/tiny/v1.pt", secret, "s") == (
        "https://acct.blob.core.windows.net",
        "models",
        "tiny/v1.pt",
    )
    blob = "https://acct.blob.core.windows.net/models/tiny/v1.pt"
    assert azure._locate(blob, {}, "s") == (
        "https://acct.blob.core.windows.net",
        "models",
        "tiny/v1.pt",
    )
    emulator = {"AZURE_STORAGE_ENDPOINT": "http://127.0.0.1:10000/devstoreaccount1/"}
    assert azure._locate("az://models/a%20b.pt", secret, "s")[2] == "a%20b.pt"  # literal
    assert azure._locate(blob.replace("v1", "a%20b"), {}, "s")[2] == "tiny/a b.pt"  # a URL
    assert azure._locate("az://models/x.pt", emulator, "s")[0] == (
        "http://127.0.0.1:10000/devstoreaccount1"
    )
    assert azure._account_of("http://127.0.0.1:10000/devstoreaccount1") == "devstoreaccount1"
    assert azure._account_of("https://acct.blob.core.windows.net") == "acct"


def test_az_blob_urls_are_recognised() -> None:
    assert azure.is_blob_url("https://acct.blob.core.windows.net/c/x.pt")
    for uri in (
        "http://acct.blob.core.windows.net/c/x.pt",
        "https://blob.core.windows.net/c",
        "https://acct.blob.core.windows.net.evil.example/c/x.pt",
        "https://[::1/x",
    ):
        assert not azure.is_blob_url(uri), uri


@pytest.mark.parametrize(
    ("uri", "secret", "match"),
    [
        ("az://models/x.pt", {}, r"needs AZURE_STORAGE_ACCOUNT .* or AZURE_STORAGE_ENDPOINT"),
        ("az://models/x.pt", {"AZURE_STORAGE_ACCOUNT": "Bad_Name"}, r"needs AZURE_STORAGE_ACCOUNT"),
        ("az://models", {"AZURE_STORAGE_ACCOUNT": "acct"}, r"is not az://CONTAINER/BLOB"),
        (
            "az://models/x.pt",
            {"AZURE_STORAGE_ENDPOINT": "ftp://h"},
            r"AZURE_STORAGE_ENDPOINT .* not",
        ),
    ],
)
def test_az_uri_or_secret_that_names_no_blob(uri: str, secret: dict[str, str], match: str) -> None:
    with pytest.raises(FetchError, match=match):
        azure._locate(uri, secret, "shown")


def test_az_account_key_signs_a_read_sas_and_a_bad_key_is_refused_unquoted() -> None:
    secret = {"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_KEY": "a2V5"}
    sas = azure._credential(secret, "https://acct.blob.core.windows.net", "c", "x.pt", "s")
    assert "sp=r" in sas and "sig=" in sas and "a2V5" not in sas
    bad = {**secret, "AZURE_STORAGE_KEY": "SECRET not base64!"}
    with pytest.raises(FetchError, match=r"is not a storage account key") as caught:
        azure._credential(bad, "https://acct.blob.core.windows.net", "c", "x.pt", "s")
    assert "SECRET" not in str(caught.value)
    assert azure._credential({"AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=x"}, "", "c", "b", "s") == (
        "sv=1&sig=x"
    )
