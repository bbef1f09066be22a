//! The GBNF grammar behind `response_format: {"type": "json_object"}`.

/// Any JSON object (RFC 8259), with whitespace limited to one space or a newline and
/// some indentation between tokens, so a model cannot stall in endless blanks. Strings
/// take any character but the unescaped quote, backslash and control characters.
pub const JSON_OBJECT: &str = r#"
root    ::= "{" blank ( member ( "," blank member )* )? "}" blank
value   ::= object | array | string | number | "true" blank | "false" blank | "null" blank
object  ::= "{" blank ( member ( "," blank member )* )? "}" blank
member  ::= string ":" blank value
array   ::= "[" blank ( value ( "," blank value )* )? "]" blank
string  ::= "\"" char* "\"" blank
char    ::= [^"\\\x00-\x1F\x7F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number  ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )? blank
blank   ::= ( " " | "\n" [ \t]{0,16} )?
"#;
