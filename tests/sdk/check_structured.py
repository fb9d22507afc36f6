"""Structured output through the official SDKs' parse helpers (argv: base URL).

openai: `chat.completions.parse` (and `beta.chat.completions.parse` where the SDK still
has it) with a pydantic model (a strict `json_schema` response_format); anthropic:
`messages.parse` with `output_format` (a pydantic model). The mock answers with a
StructuredOutput call of {"name": "Ada", "age": 36}.
"""
import sys

import anthropic
import openai
from pydantic import BaseModel


class Person(BaseModel):
    name: str
    age: int


def check(label, person):
    assert isinstance(person, Person), f"{label}: {person!r}"
    assert (person.name, person.age) == ("Ada", 36), f"{label}: {person!r}"
    print(f"ok   {label}")


base = sys.argv[1]
oa = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-unused", max_retries=0)
r = oa.chat.completions.parse(model="sonnet", messages=[{"role": "user", "content": "A person"}],
                              response_format=Person, reasoning_effort="low")
check("openai chat.completions.parse", r.choices[0].message.parsed)
beta = getattr(getattr(oa, "beta", None), "chat", None)
if beta is not None and hasattr(beta, "completions"):
    r = beta.completions.parse(model="sonnet", messages=[{"role": "user", "content": "A person"}],
                               response_format=Person)
    check("openai beta.chat.completions.parse", r.choices[0].message.parsed)
else:
    print(f"note openai {openai.__version__} has no beta.chat.completions.parse (chat.completions.parse checked)")

an = anthropic.Anthropic(base_url=base, api_key="sk-unused", max_retries=0)
m = an.messages.parse(model="sonnet", max_tokens=1024, messages=[{"role": "user", "content": "A person"}],
                      output_format=Person)
check("anthropic messages.parse(output_format=…)", m.parsed_output)

r = oa.responses.parse(model="sonnet", input="A person", text_format=Person,
                       reasoning={"effort": "low"})
check("openai responses.parse(text_format=…)", r.output_parsed)
