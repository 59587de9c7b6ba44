"""The demo model's chat template: Gemma 4's turn format, written for edgevid.

Modelled on the chat template that ships with google/gemma-4-*-it: ``<bos>``, an optional system turn
(opened with ``<|think|>`` when ``enable_thinking`` is set), ``<|turn>user|model ... <turn|>`` turns,
one ``<|image|>`` / ``<|video|>`` / ``<|audio|>`` marker per media part (the processor — or the edgevid
runtime — expands each marker into ``<|image>`` + soft tokens + ``<image|>``), thinking stripped from
earlier model turns, and ``<|turn>model\\n`` as the generation prompt. Tool declarations and tool calls
are left out: the demo model has no tools.

Renders identically with transformers' ``apply_chat_template`` and with plain jinja2
(``jinja2.Environment(trim_blocks=True, lstrip_blocks=True)`` or a sandboxed one with the same flags),
given ``messages``, ``bos_token``, ``add_generation_prompt`` and optionally ``enable_thinking``; no
extra globals or filters are needed. Roles are not validated here (the runtime checks them).
"""

DEMO_CHAT_TEMPLATE = r"""{#- edgevid demo chat template, Gemma 4 turn format -#}
{%- macro strip_thinking(text) -%}
    {%- set ns_strip = namespace(out='') -%}
    {%- for piece in text.split('<channel|>') -%}
        {%- if '<|channel>' in piece -%}
            {%- set ns_strip.out = ns_strip.out + piece.split('<|channel>')[0] -%}
        {%- else -%}
            {%- set ns_strip.out = ns_strip.out + piece -%}
        {%- endif -%}
    {%- endfor -%}
    {{- ns_strip.out | trim -}}
{%- endmacro -%}
{%- macro render_text(text, role) -%}
    {%- if role == 'model' -%}
        {{- strip_thinking(text) -}}
    {%- else -%}
        {{- text | trim -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro render_content(content, role) -%}
    {%- if content is string -%}
        {{- render_text(content, role) -}}
    {%- elif content is not none -%}
        {%- for part in content -%}
            {%- if part['type'] == 'text' -%}
                {{- render_text(part['text'], role) -}}
            {%- elif part['type'] in ['image', 'image_url'] -%}
                {{- '<|image|>' -}}
            {%- elif part['type'] in ['video', 'video_url'] -%}
                {{- '<|video|>' -}}
            {%- elif part['type'] in ['audio', 'input_audio'] -%}
                {{- '<|audio|>' -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{{- bos_token -}}
{%- set thinking = enable_thinking is defined and enable_thinking -%}
{%- set has_system = messages | length > 0 and messages[0]['role'] in ['system', 'developer'] -%}
{%- if thinking or has_system -%}
    {{- '<|turn>system\n' -}}
    {%- if thinking -%}
        {{- '<|think|>\n' -}}
    {%- endif -%}
    {%- if has_system -%}
        {{- render_content(messages[0]['content'], 'system') -}}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if not (loop.first and has_system) -%}
        {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
        {{- '<|turn>' + role + '\n' -}}
        {{- render_content(message['content'], role) -}}
        {{- '<turn|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n' -}}
{%- endif -%}
"""
