"""``p13n items load`` run as the real command: JSON lines and CSV into the data dir's items.db,
bad files rejected whole, and DynamoDB namespaces loaded through BatchWriteItem."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from aws.clients import client
from query.metadata import MetadataContext
from query.metadata.dynamodb import DynamoDbMetadata
from query.metadata.localdb import default_path, read_items
from schemas.config import default_document, load_config
from tests.fixtures.service import P13N


def write_config(tmp_path: Path, metadata: dict[str, Any] | None = None) -> Path:
    document = default_document()
    if metadata is not None:
        document["namespaces"]["demo"]["inferenceItemMetadata"] = metadata
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return path


def items_load(
    tmp_path: Path, config: Path, file: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [P13N, "items", "load", str(file), "--config", str(config)]
    command += ["--data-dir", str(tmp_path / "data"), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def test_json_lines_are_loaded_and_looked_up(tmp_path: Path, config: Path) -> None:
    source = tmp_path / "items.jsonl"
    source.write_text(
        '{"itemId": "a", "name": "Alpha", "price": 9.5, "tags": ["x"]}\n'
        "\n"
        '{"id": "b", "name": "Beta"}\n'
        '{"itemId": 7, "name": "Seven"}\n'
    )
    done = items_load(tmp_path, config, source, "--namespace", "demo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("loaded 3 items into demo")
    found = read_items(default_path(str(tmp_path / "data")), "demo", ["a", "b", "7", "c"])
    assert found == {
        "a": {"name": "Alpha", "price": 9.5, "tags": ["x"]},
        "b": {"name": "Beta"},
        "7": {"name": "Seven"},
    }


def test_csv_is_loaded_with_its_id_column(tmp_path: Path, config: Path) -> None:
    source = tmp_path / "items.csv"
    source.write_text('ITEM_ID,NAME,PRICE\nsku-1,"Shoe, red",19.99\nsku-2,Hat,5\n')
    done = items_load(tmp_path, config, source, "--namespace", "demo")
    assert done.returncode == 0, done.stderr
    assert "loaded 2 items into demo" in done.stdout
    found = read_items(default_path(str(tmp_path / "data")), "demo", ["sku-1", "sku-2"])
    assert found == {
        "sku-1": {"NAME": "Shoe, red", "PRICE": "19.99"},
        "sku-2": {"NAME": "Hat", "PRICE": "5"},
    }

    other = tmp_path / "other.csv"
    other.write_text("sku,title\nsku-3,Scarf\n")
    done = items_load(tmp_path, config, other, "--namespace", "demo", "--id-column", "sku")
    assert done.returncode == 0, done.stderr
    assert read_items(default_path(str(tmp_path / "data")), "demo", ["sku-3"]) == {
        "sku-3": {"title": "Scarf"}
    }


def test_bad_rows_are_reported_by_line_and_nothing_is_written(tmp_path: Path, config: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"itemId": "a", "v": 1}\n')
    assert items_load(tmp_path, config, good, "--namespace", "demo").returncode == 0

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"itemId": "a", "v": 2}\n'
        '{"itemId": "b", "v": 2\n'
        '{"itemId": "c", "v": 2}\n'
        '{"name": "no id"}\n'
        '["not", "an", "object"]\n'
    )
    done = items_load(tmp_path, config, bad, "--namespace", "demo")
    assert done.returncode == 2
    assert "3 bad row(s); nothing loaded" in done.stderr
    assert "line 2: not JSON" in done.stderr
    assert "line 4: no item id" in done.stderr
    assert "line 5: not a JSON object" in done.stderr
    assert done.stdout == ""
    path = default_path(str(tmp_path / "data"))
    assert read_items(path, "demo", ["a", "b", "c"]) == {"a": {"v": 1}}

    csv_bad = tmp_path / "bad.csv"
    csv_bad.write_text("itemId,name\nx,X\ny\n,nameless\n")
    done = items_load(tmp_path, config, csv_bad, "--namespace", "demo")
    assert done.returncode == 2
    assert "line 3: 1 field(s), the header has 2" in done.stderr
    assert "line 4: no item id" in done.stderr
    assert read_items(path, "demo", ["x"]) == {}


def test_a_csv_without_an_id_column_and_a_missing_file_exit_2(tmp_path: Path, config: Path) -> None:
    source = tmp_path / "items.csv"
    source.write_text("sku,name\n1,A\n")
    done = items_load(tmp_path, config, source, "--namespace", "demo")
    assert done.returncode == 2
    assert "line 1: no id column: expected one of itemId, ITEM_ID, id" in done.stderr

    done = items_load(tmp_path, config, tmp_path / "absent.jsonl", "--namespace", "demo")
    assert done.returncode == 2
    assert "cannot read" in done.stderr
    assert read_items(default_path(str(tmp_path / "data")), "demo", ["1"]) == {}


def test_an_unknown_namespace_is_refused(tmp_path: Path, config: Path) -> None:
    source = tmp_path / "items.jsonl"
    source.write_text('{"itemId": "a"}\n')
    done = items_load(tmp_path, config, source, "--namespace", "nope")
    assert done.returncode == 1
    assert "Namespace 'nope' is not configured" in done.stderr


def test_a_dynamodb_namespace_is_loaded_into_its_table(moto_server: str, tmp_path: Path) -> None:
    table = f"items-{uuid.uuid4().hex[:12]}"
    dynamodb = client("dynamodb", endpoint_url=moto_server)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "itemId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "itemId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        settings = {
            "type": "dynamodb",
            "layout": "p13n",
            "tableName": table,
            "endpointUrl": moto_server,
        }
        config = write_config(tmp_path, settings)
        source = tmp_path / "items.jsonl"
        lines = [json.dumps({"itemId": f"i{n}", "price": n + 0.5}) for n in range(60)]
        source.write_text("\n".join(lines) + '\n{"itemId": "i0", "price": 1}\n')
        done = items_load(tmp_path, config, source, "--namespace", "demo")
        assert done.returncode == 0, done.stderr
        assert f"loaded 61 items into demo (dynamodb table {table})" in done.stdout

        store = DynamoDbMetadata(settings, MetadataContext(load_config(default_document())))
        found = asyncio.run(store.lookup("demo", [f"i{n}" for n in range(60)]))
        asyncio.run(store.close())
        assert len(found) == 60
        assert found["i0"] == {"price": 1} and found["i59"] == {"price": 59.5}

        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"itemId": "new", "price": 1}\n{"price": 2}\n')
        done = items_load(tmp_path, config, bad, "--namespace", "demo")
        assert done.returncode == 2
        assert "line 2: no item id" in done.stderr
        assert "Item" not in dynamodb.get_item(TableName=table, Key={"itemId": {"S": "new"}})
    finally:
        dynamodb.delete_table(TableName=table)
        dynamodb.close()
