//! Upstream providers. This version speaks the OpenAI wire format to any OpenAI-compatible
//! base URL.

pub mod openai;
