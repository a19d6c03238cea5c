"""vLLM's ``structured_outputs`` request extension -> StructuredOutputs, and its 400s."""

from __future__ import annotations

import pytest

from minerva.errors import RequestError
from minerva.sampling_params import StructuredOutputs
from minerva.server.openai_protocol import ChatCompletionRequest
from minerva.server.structured_formats import from_structured_outputs


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ({"regex": "a+b"}, StructuredOutputs(regex="a+b")),
        ({"choice": ["yes", "no"]}, StructuredOutputs(choice=("yes", "no"))),
        ({"grammar": "start: /x+/"}, StructuredOutputs(grammar="start: /x+/")),
        ({"json_object": True}, StructuredOutputs(json_object=True)),
        ({"json": {"type": "integer"}}, StructuredOutputs(json_schema={"type": "integer"})),
        ({"json": '{"type": "integer"}'}, StructuredOutputs(json_schema='{"type": "integer"}')),
        ({"regex": "a", "choice": None}, StructuredOutputs(regex="a")),  # nulls are unset
    ],
)
def test_each_kind_maps_to_its_constraint(value, expected):
    assert from_structured_outputs(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "a+b",
        {},
        {"regex": "a", "choice": ["a"]},
        {"regex": ""},
        {"choice": []},
        {"choice": ["a", 1]},
        {"json_object": False},
        {"structural_tag": "x"},
    ],
)
def test_malformed_values_are_400s_naming_the_field(value):
    with pytest.raises(RequestError) as e:
        from_structured_outputs(value)
    assert e.value.param == "structured_outputs"


def test_it_cannot_be_combined_with_response_format():
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "structured_outputs": {"regex": "a"},
            "response_format": {"type": "json_object"},
        }
    )
    with pytest.raises(RequestError) as e:
        body.structured_output()
    assert e.value.param == "structured_outputs"
