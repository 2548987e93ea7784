// Built-in `llama-4` chat template (llama4-spec.md §5.3), our own text.
// It follows the behaviour of the template shipped with the Llama 4 checkpoints: no default
// system prompt; with tools, "Environment: ipython" in the system turn and the tool schemas
// in the first user turn (unless tools_in_user_message is false: then in the system turn);
// assistant tool calls as <|python_start|>content<|python_end|>{"name": .., "parameters": ..};
// tool results as ipython turns; images as <|image|>. Every turn ends with <|eot|>.
// The caller has already validated and normalised the messages (see chat_template.ts).
export const LLAMA4_TEMPLATE = `
{%- macro header(role) -%}<|header_start|>{{ role }}<|header_end|>{{ '\\n\\n' }}{%- endmacro -%}
{%- macro render_content(content) -%}
  {%- if content is string -%}{{ content }}
  {%- else -%}
    {%- for part in content -%}
      {%- if part.type == 'text' -%}{{ part.text }}
      {%- elif part.type == 'image' -%}<|image|>
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- macro tool_instructions() -%}
  {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' -}}
  {{- 'Do not use variables.\\n\\n' -}}
  {%- for t in tools -%}{{ t | tojson(indent=4) }}{{ '\\n\\n' }}{%- endfor -%}
{%- endmacro -%}
{%- if tools is not defined or not tools -%}{%- set tools = none -%}{%- endif -%}
{%- if tools_in_user_message is not defined -%}{%- set tools_in_user_message = true -%}{%- endif -%}
{%- set ns = namespace(tools_pending=(tools is not none and tools_in_user_message)) -%}
<|begin_of_text|>
{%- if messages[0].role == 'system' or (tools is not none and not tools_in_user_message) -%}
  {{- header('system') -}}
  {%- if tools is not none -%}{{ 'Environment: ipython\\n' }}{%- endif -%}
  {%- if tools is not none and not tools_in_user_message -%}
    {{- 'You have access to the following functions. To call a function, please respond with JSON for a function call.' -}}
    {{- tool_instructions() -}}
  {%- endif -%}
  {%- if messages[0].role == 'system' -%}{{ render_content(messages[0].content) | trim }}{%- endif -%}
  <|eot|>
{%- endif -%}
{%- for message in messages -%}
  {%- if loop.first and message.role == 'system' -%}
  {%- elif message.role == 'tool' or message.role == 'ipython' -%}
    {{- header('ipython') -}}{{ render_content(message.content) }}<|eot|>
  {%- elif message.role == 'assistant' and message.tool_calls -%}
    {{- header('assistant') -}}<|python_start|>{{ render_content(message.content) }}<|python_end|>
    {%- for call in message.tool_calls -%}
      {{- '{"name": ' + (call.function.name | tojson) + ', "parameters": ' + (call.function.arguments | tojson) + '}' -}}
    {%- endfor -%}
    <|eot|>
  {%- else -%}
    {{- header(message.role) -}}
    {%- if message.role == 'user' and ns.tools_pending -%}
      {%- set ns.tools_pending = false -%}
      {{- 'Given the following functions, please respond with a JSON for a function call ' -}}
      {{- 'with its proper arguments that best answers the given prompt.\\n\\n' -}}
      {{- tool_instructions() -}}
      {{- render_content(message.content) | trim -}}
    {%- else -%}
      {{- render_content(message.content) -}}
    {%- endif -%}
    <|eot|>
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ header('assistant') }}{%- endif -%}
`;
