"""The SAM template (infrastructure/template.yaml) against the code it deploys.

cfn-lint runs on the template in scripts/test; these tests check what a linter cannot know:
handlers that import, tables keyed as the code keys them, the permissions every target and
variation type of the sample config needs, and the AppConfig validator's schema.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cfnlint.decode import decode_str
from jsonschema import Draft4Validator, Draft202012Validator

from consumers.experiment_store import table_spec
from consumers.supervisor import select_targets
from consumers.targets import REGISTRY as TARGET_TYPES
from query.metadata.dynamodb import LAYOUTS
from query.resolvers import REGISTRY as VARIATION_TYPES
from schemas.config import Config, default_document, load_config
from streams.dynamodb_checkpoints import create_table

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infrastructure" / "template.yaml"
SAMPLE = ROOT / "infrastructure" / "sample-config.json"
SCHEMA = ROOT / "schemas" / "config_schema.json"

API_HANDLER = "p13n.lambda_api.handler"
CONSUMER_HANDLER = "consumers.lambda_handler.handler"

# What each target type's code calls (consumers/targets/*, consumers/storage.py), as IAM actions.
TARGET_ACTIONS: Mapping[str, frozenset[str]] = {
    "personalize-event-tracker": frozenset({"personalize:PutEvents"}),
    "kinesis-stream": frozenset({"kinesis:PutRecords"}),
    "kinesis-firehose": frozenset({"firehose:PutRecordBatch"}),
    "lambda": frozenset({"lambda:InvokeFunction"}),
    # S3Storage: PutObject, GetObject (download), HeadObject (GetObject, ListBucket for a
    # 404), DeleteObjects (DeleteObject), ListObjectsV2 (ListBucket).
    "archive": frozenset({"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket"}),
    # DynamoExperimentStore: TransactWriteItems of a conditional Put and ADD Updates.
    "experiments": frozenset({"dynamodb:PutItem", "dynamodb:UpdateItem"}),
    "evidently": frozenset({"evidently:PutProjectEvents"}),
    "http": frozenset(),
    "interactions": frozenset(),  # a local SQLite file
}
# What each variation type's resolver calls (query/resolvers/*).
VARIATION_ACTIONS: Mapping[str, frozenset[str]] = {
    "personalize-campaign": frozenset(
        {"personalize:GetRecommendations", "personalize:GetPersonalizedRanking"}
    ),
    "personalize-recommender": frozenset({"personalize:GetRecommendations"}),
    "sagemaker": frozenset({"sagemaker:InvokeEndpoint"}),
    "lambda": frozenset({"lambda:InvokeFunction"}),
    "http": frozenset(),
    "local": frozenset(),
}
# Actions that take no resource ARN (or, for PutEvents, name the tracker by id), so "*".
STAR_ALLOWED = frozenset(
    {"personalize:PutEvents", "xray:PutTraceSegments", "xray:PutTelemetryRecords"}
)


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "p13n_infrastructure_render", ROOT / "infrastructure" / "render.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded, errors = decode_str(TEMPLATE.read_text(encoding="utf-8"))
    assert not errors, errors
    assert loaded is not None
    return dict(loaded)


@pytest.fixture(scope="module")
def sample() -> Config:
    return load_config(json.loads(SAMPLE.read_text(encoding="utf-8")), source=str(SAMPLE))


def resources(template: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every resource, those inside Fn::ForEach loops under their logical-id pattern."""
    for name, body in template["Resources"].items():
        if name.startswith("Fn::ForEach::"):
            _identifier, _collection, fragment = body
            yield from fragment.items()
        else:
            yield name, body


def functions(template: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    kinds = {"AWS::Serverless::Function", "AWS::Lambda::Function"}
    return {name: body for name, body in resources(template) if body["Type"] in kinds}


def statements(policy_holder: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every statement of a role's inline policies, both branches of an Fn::If included."""
    for policy in policy_holder["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in statement:
                _condition, *branches = statement["Fn::If"]
                yield from (b for b in branches if b != {"Ref": "AWS::NoValue"})
            else:
                yield statement


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowed_actions(template: Mapping[str, Any], handler: str) -> set[str]:
    """The actions allowed to the role of every function with this handler (all must agree)."""
    roles = {
        body["Properties"]["Role"]["Fn::GetAtt"][0]
        for body in functions(template).values()
        if body["Properties"]["Handler"] == handler
    }
    assert len(roles) == 1, f"{handler}: expected one role, found {roles}"
    role = dict(resources(template))[roles.pop()]
    return {
        action
        for statement in statements(role)
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
    }


def variation_types(config: Config) -> set[str]:
    return {
        variation.type
        for namespace in config.namespaces.values()
        for by_name in namespace.recommenders.values()
        for recommender in by_name.values()
        for variation in recommender.variations.values()
    }


# -- handlers ----------------------------------------------------------------------------------


def test_every_function_handler_is_an_importable_callable(template: dict[str, Any]) -> None:
    handlers = {body["Properties"]["Handler"] for body in functions(template).values()}
    assert handlers == {API_HANDLER, CONSUMER_HANDLER}
    for handler in handlers:
        module_name, _, attribute = handler.rpartition(".")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute)), handler


def test_consumers_read_the_stream_as_the_lambda_handler_expects(template: dict[str, Any]) -> None:
    consumers = [
        body
        for body in functions(template).values()
        if body["Properties"]["Handler"] == CONSUMER_HANDLER
    ]
    assert len(consumers) == 1  # one per event target, through Fn::ForEach
    properties = consumers[0]["Properties"]
    assert properties["Environment"]["Variables"]["P13N_TARGET"] == {"Ref": "Target"}
    (event,) = properties["Events"].values()
    assert event["Type"] == "Kinesis"
    mapping = event["Properties"]
    assert mapping["Stream"] == {"Fn::GetAtt": ["EventStream", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BisectBatchOnFunctionError"] is True
    for setting in (
        "MaximumRetryAttempts",
        "MaximumRecordAgeInSeconds",
        "MaximumBatchingWindowInSeconds",
    ):
        assert setting in mapping
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"]


def test_default_event_targets_name_one_target_each_in_the_sample(
    template: dict[str, Any], sample: Config
) -> None:
    names = template["Parameters"]["EventTargets"]["Default"].split(",")
    for name in names:
        assert len(select_targets(sample, [name])) == 1, name


def test_functions_read_the_config_from_appconfig(template: dict[str, Any]) -> None:
    for name, body in functions(template).items():
        variables = body["Properties"]["Environment"]["Variables"]
        assert variables["P13N_CONFIG"] == {
            "Fn::Sub": "appconfig://${NamePrefix}/${EnvironmentName}/config"
        }, name
        assert variables["P13N_APPCONFIG_AGENT"] == "http://localhost:2772", name
        assert body["Properties"]["Layers"] == [{"Ref": "AppConfigExtensionLayerArn"}], name
        assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"} <= set(variables)


# -- tables ------------------------------------------------------------------------------------


def key_schema(properties: Mapping[str, Any]) -> tuple[Any, Any]:
    """(key schema, attribute definitions) in a comparable form."""
    keys = sorted((k["AttributeName"], k["KeyType"]) for k in properties["KeySchema"])
    attributes = sorted(
        (a["AttributeName"], a["AttributeType"]) for a in properties["AttributeDefinitions"]
    )
    return keys, attributes


class _RecordingDynamoDB:
    def __init__(self) -> None:
        self.created: dict[str, Any] = {}

    def create_table(self, **kwargs: Any) -> None:
        self.created = kwargs

    def get_waiter(self, name: str) -> Any:
        return self

    def wait(self, **kwargs: Any) -> None:
        pass


def test_tables_are_keyed_and_billed_as_the_code_creates_them(template: dict[str, Any]) -> None:
    tables = {
        n: b["Properties"] for n, b in resources(template) if b["Type"] == "AWS::DynamoDB::Table"
    }
    assert all(p["BillingMode"] == "PAY_PER_REQUEST" for p in tables.values())

    recorded = _RecordingDynamoDB()
    create_table(recorded, "p13n-checkpoints")
    assert key_schema(tables["CheckpointsTable"]) == key_schema(recorded.created)
    assert tables["CheckpointsTable"]["TableName"] == {"Fn::Sub": "${NamePrefix}-checkpoints"}

    assert key_schema(tables["ExperimentsTable"]) == key_schema(table_spec("p13n-experiments"))

    # The template's item tables have the p13n layout (the sample config says so).
    items = tables["ItemsTable&{Namespace}"]
    key = LAYOUTS["p13n"].key
    assert key_schema(items) == ([(key, "HASH")], [(key, "S")])
    # With the default prefix the tables are named as p13n looks for them.
    assert items["TableName"] == {"Fn::Sub": "${NamePrefix}-items-${Namespace}"}
    assert LAYOUTS["p13n"].table == "p13n-items-{namespace}"
    assert template["Parameters"]["NamePrefix"]["Default"] == "p13n"


def test_sample_config_names_what_the_template_creates(sample: Config) -> None:
    document = sample.document
    assert document["stream"]["streamName"] == "p13n-events"
    assert document["checkpoints"]["tableName"] == "p13n-checkpoints"
    assert document["experimentStore"]["tableName"] == "p13n-experiments"
    bucket = "s3://p13n-123456789012-us-east-1/"
    assert document["deadLetter"]["uri"].startswith(bucket + "dead-letters")
    archives = [
        t for ns in sample.namespaces.values() for t in ns.event_targets if t.type == "archive"
    ]
    assert archives and all(t.options["uri"].startswith(bucket + "archive") for t in archives)


# -- permissions -------------------------------------------------------------------------------


def test_every_registered_type_has_its_actions_listed() -> None:
    # A new target or variation type must say here what it calls.
    assert set(TARGET_ACTIONS) == set(TARGET_TYPES)
    assert set(VARIATION_ACTIONS) == set(VARIATION_TYPES)


def test_sample_config_uses_every_type_that_calls_aws_on_lambda(sample: Config) -> None:
    targets = {t.type for t in select_targets(sample)}
    # evidently is discontinued; interactions needs the embedded recommender's local disk.
    calling_aws = {t for t, actions in TARGET_ACTIONS.items() if actions}
    assert targets == (calling_aws - {"evidently"}) | {"http"}
    assert variation_types(sample) == set(VARIATION_TYPES) - {"local"}


def test_consumer_role_allows_what_every_sample_target_calls(
    template: dict[str, Any], sample: Config
) -> None:
    allowed = allowed_actions(template, CONSUMER_HANDLER)
    for target in select_targets(sample):
        missing = TARGET_ACTIONS[target.type] - allowed
        assert not missing, f"{target.group} ({target.type}) lacks {sorted(missing)}"
    # Dead letters in S3, and the mappings reading the stream.
    assert sample.dead_letter_uri and sample.dead_letter_uri.startswith("s3://")
    assert {"s3:PutObject", "kinesis:GetRecords", "kinesis:GetShardIterator"} <= allowed
    assert {"appconfig:StartConfigurationSession", "appconfig:GetLatestConfiguration"} <= allowed


def test_api_role_allows_what_every_sample_variation_calls(
    template: dict[str, Any], sample: Config
) -> None:
    allowed = allowed_actions(template, API_HANDLER)
    for variation_type in variation_types(sample):
        missing = VARIATION_ACTIONS[variation_type] - allowed
        assert not missing, f"variation type {variation_type} lacks {sorted(missing)}"
    # The producer and /readyz, DynamoDB item metadata, the response post-processor, config.
    assert {"kinesis:PutRecords", "kinesis:ListShards", "kinesis:DescribeStreamSummary"} <= allowed
    assert "dynamodb:BatchGetItem" in allowed
    assert "lambda:InvokeFunction" in allowed
    assert {"appconfig:StartConfigurationSession", "appconfig:GetLatestConfiguration"} <= allowed


def test_no_statement_allows_every_resource_but_for_actions_that_need_it(
    template: dict[str, Any],
) -> None:
    roles = [b for _, b in resources(template) if b["Type"] == "AWS::IAM::Role"]
    assert len(roles) == 2
    for role in roles:
        for statement in statements(role):
            if statement["Effect"] != "Allow":
                continue
            actions = as_list(statement["Action"])
            assert all("*" not in action for action in actions), statement
            if "*" in as_list(statement["Resource"]):
                assert set(actions) <= STAR_ALLOWED, statement


# -- the AppConfig validator -------------------------------------------------------------------


def embedded_schema(template: Mapping[str, Any]) -> Any:
    profile = template["Resources"]["ConfigProfile"]["Properties"]
    (validator,) = profile["Validators"]
    assert validator["Type"] == "JSON_SCHEMA"
    return json.loads(validator["Content"])


def test_embedded_schema_is_the_projection_of_the_config_schema(template: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert embedded_schema(template) == render.draft4(schema), (
        "the template is stale: run .venv/bin/python infrastructure/render.py"
    )
    assert len(render.content(schema)) <= render.MAX_CONTENT


def test_embedded_schema_is_draft4_and_agrees_with_the_schema_on_configs(
    template: dict[str, Any],
) -> None:
    embedded = embedded_schema(template)
    Draft4Validator.check_schema(embedded)
    draft4 = Draft4Validator(embedded)
    full = Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    valid = [json.loads(SAMPLE.read_text(encoding="utf-8")), default_document()]
    for document in valid:
        assert not list(draft4.iter_errors(document))

    def broken(change: Any) -> Any:
        document = json.loads(SAMPLE.read_text(encoding="utf-8"))
        change(document)
        return document

    shop = lambda d: d["namespaces"]["shop"]  # noqa: E731
    invalid = [
        # if/then on the target type
        broken(lambda d: shop(d)["eventTargets"][0].pop("trackingId")),
        broken(lambda d: shop(d)["eventTargets"][1].update(rollSeconds=0)),
        broken(lambda d: d["stream"].update(type="kafka")),
        broken(lambda d: d["stream"].pop("streamName")),
        # exclusiveMinimum
        broken(lambda d: shop(d)["eventTargets"][0].update(maxCallsPerSecond=0)),
        broken(lambda d: shop(d)["recommenders"]["recommend-items"]["for-you"].pop("variations")),
        broken(lambda d: d.update(unknownKey=1)),
    ]
    for document in invalid:
        assert list(full.iter_errors(document))  # the case is really invalid
        assert list(draft4.iter_errors(document)), document


def test_render_rewrites_only_the_marked_line() -> None:
    text = "a: 1\nv:\n  Content: '{}'  " + render.MARKER + "\nb: 2\n"
    rendered = render.render(text, {"type": "object", "const": "it's"})
    assert rendered.startswith("a: 1\nv:\n  Content: '")
    assert rendered.endswith(render.MARKER + "\nb: 2\n")
    loaded, _ = decode_str(rendered)
    assert loaded is not None
    assert json.loads(loaded["v"]["Content"]) == {
        "type": "object",
        "enum": ["it's"],
        "$schema": render.DRAFT4,
    }
    with pytest.raises(render.RenderError):
        render.render(text, {"prefixItems": []})
