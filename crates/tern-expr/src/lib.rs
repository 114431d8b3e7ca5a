//! tern-expr: The flespi expression language: lexer, parser, checker, evaluator; pure
