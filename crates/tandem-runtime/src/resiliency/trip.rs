//! The `trip` expression of a circuit breaker: a CEL expression over the breaker's counts
//! (`requests`, `totalSuccesses`, `totalFailures`, `consecutiveSuccesses`,
//! `consecutiveFailures`, all integers) that opens the breaker when true.
//!
//! Accepted: comparisons (`>`, `>=`, `<`, `<=`, `==`, `!=`) of counts and integers, integer
//! arithmetic (`+ - * / %`), `!`, `&&`, `||`, parentheses and `true`/`false`, compiled at
//! start-up into a small tree that is evaluated without allocating. An unknown variable or
//! other syntax is a start-up error. An evaluation error (division by zero, overflow) or a
//! non-boolean result does not trip the breaker.

use std::fmt;

use super::Counts;

/// A compiled trip expression.
pub struct TripExpr {
    source: String,
    root: Node,
}

impl fmt::Debug for TripExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TripExpr({:?})", self.source)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Requests,
    TotalSuccesses,
    TotalFailures,
    ConsecutiveSuccesses,
    ConsecutiveFailures,
}

const VARS: [(&str, Var); 5] = [
    ("requests", Var::Requests),
    ("totalSuccesses", Var::TotalSuccesses),
    ("totalFailures", Var::TotalFailures),
    ("consecutiveSuccesses", Var::ConsecutiveSuccesses),
    ("consecutiveFailures", Var::ConsecutiveFailures),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug)]
enum Node {
    Int(i64),
    Bool(bool),
    Var(Var),
    Not(Box<Node>),
    Neg(Box<Node>),
    Binary(Op, Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(i64),
    Bool(bool),
}

impl TripExpr {
    /// Compiles `source`; an expression that is not valid is an error naming the problem.
    pub fn parse(source: &str) -> Result<Self, String> {
        let root = Parser::new(source)
            .and_then(|mut p| p.parse_all())
            .map_err(|e| format!("invalid trip expression '{source}': {e}"))?;
        Ok(Self {
            source: source.to_owned(),
            root,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `counts` trip the breaker.
    pub fn eval(&self, counts: &Counts) -> bool {
        matches!(eval(&self.root, counts), Some(Value::Bool(true)))
    }
}

fn get(var: Var, c: &Counts) -> u64 {
    match var {
        Var::Requests => c.requests,
        Var::TotalSuccesses => c.total_successes,
        Var::TotalFailures => c.total_failures,
        Var::ConsecutiveSuccesses => c.consecutive_successes,
        Var::ConsecutiveFailures => c.consecutive_failures,
    }
}

fn eval(node: &Node, c: &Counts) -> Option<Value> {
    Some(match node {
        Node::Int(i) => Value::Int(*i),
        Node::Bool(b) => Value::Bool(*b),
        Node::Var(v) => Value::Int(i64::try_from(get(*v, c)).unwrap_or(i64::MAX)),
        Node::Not(n) => match eval(n, c)? {
            Value::Bool(b) => Value::Bool(!b),
            Value::Int(_) => return None,
        },
        Node::Neg(n) => match eval(n, c)? {
            Value::Int(i) => Value::Int(i.checked_neg()?),
            Value::Bool(_) => return None,
        },
        Node::Binary(Op::Or, l, r) => {
            // CEL's `||` and `&&` are commutative about errors; short-circuiting on a
            // deciding side is enough here.
            match (eval(l, c), eval(r, c)) {
                (Some(Value::Bool(true)), _) | (_, Some(Value::Bool(true))) => Value::Bool(true),
                (Some(Value::Bool(false)), Some(Value::Bool(false))) => Value::Bool(false),
                _ => return None,
            }
        }
        Node::Binary(Op::And, l, r) => match (eval(l, c), eval(r, c)) {
            (Some(Value::Bool(false)), _) | (_, Some(Value::Bool(false))) => Value::Bool(false),
            (Some(Value::Bool(true)), Some(Value::Bool(true))) => Value::Bool(true),
            _ => return None,
        },
        Node::Binary(op, l, r) => {
            let (l, r) = (eval(l, c)?, eval(r, c)?);
            match (op, l, r) {
                (Op::Eq, l, r) => Value::Bool(same_type(l, r)? && l == r),
                (Op::Ne, l, r) => Value::Bool(same_type(l, r)? && l != r),
                (op, Value::Int(a), Value::Int(b)) => match op {
                    Op::Lt => Value::Bool(a < b),
                    Op::Le => Value::Bool(a <= b),
                    Op::Gt => Value::Bool(a > b),
                    Op::Ge => Value::Bool(a >= b),
                    Op::Add => Value::Int(a.checked_add(b)?),
                    Op::Sub => Value::Int(a.checked_sub(b)?),
                    Op::Mul => Value::Int(a.checked_mul(b)?),
                    Op::Div => Value::Int(a.checked_div(b)?),
                    Op::Rem => Value::Int(a.checked_rem(b)?),
                    Op::Or | Op::And | Op::Eq | Op::Ne => return None,
                },
                _ => return None,
            }
        }
    })
}

/// CEL has no implicit conversions: comparing an int with a bool is an error.
fn same_type(l: Value, r: Value) -> Option<bool> {
    matches!(
        (l, r),
        (Value::Int(_), Value::Int(_)) | (Value::Bool(_), Value::Bool(_))
    )
    .then_some(true)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(i64),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn new(source: &str) -> Result<Self, String> {
        Ok(Self {
            tokens: tokenize(source)?,
            pos: 0,
        })
    }

    fn parse_all(&mut self) -> Result<Node, String> {
        if self.tokens.is_empty() {
            return Err("empty expression".into());
        }
        let node = self.or()?;
        match self.tokens.get(self.pos) {
            None => Ok(node),
            Some(t) => Err(format!("unexpected {}", describe(t))),
        }
    }

    fn peek_op(&self, ops: &[&'static str]) -> Option<&'static str> {
        match self.tokens.get(self.pos) {
            Some(Token::Op(o)) if ops.contains(o) => Some(o),
            _ => None,
        }
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.peek_op(&["||"]).is_some() {
            self.pos += 1;
            left = Node::Binary(Op::Or, Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.comparison()?;
        while self.peek_op(&["&&"]).is_some() {
            self.pos += 1;
            left = Node::Binary(Op::And, Box::new(left), Box::new(self.comparison()?));
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Node, String> {
        let left = self.sum()?;
        let Some(op) = self.peek_op(&["==", "!=", "<", "<=", ">", ">="]) else {
            return Ok(left);
        };
        self.pos += 1;
        let op = match op {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            _ => Op::Ge,
        };
        let right = self.sum()?;
        if self.peek_op(&["==", "!=", "<", "<=", ">", ">="]).is_some() {
            return Err("chained comparisons need parentheses".into());
        }
        Ok(Node::Binary(op, Box::new(left), Box::new(right)))
    }

    fn sum(&mut self) -> Result<Node, String> {
        let mut left = self.product()?;
        while let Some(op) = self.peek_op(&["+", "-"]) {
            self.pos += 1;
            let op = if op == "+" { Op::Add } else { Op::Sub };
            left = Node::Binary(op, Box::new(left), Box::new(self.product()?));
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Node, String> {
        let mut left = self.unary()?;
        while let Some(op) = self.peek_op(&["*", "/", "%"]) {
            self.pos += 1;
            let op = match op {
                "*" => Op::Mul,
                "/" => Op::Div,
                _ => Op::Rem,
            };
            left = Node::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.peek_op(&["!"]).is_some() {
            self.pos += 1;
            return Ok(Node::Not(Box::new(self.unary()?)));
        }
        if self.peek_op(&["-"]).is_some() {
            self.pos += 1;
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, String> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of expression")?;
        self.pos += 1;
        match token {
            Token::Int(i) => Ok(Node::Int(i)),
            Token::Ident(name) => match name.as_str() {
                "true" => Ok(Node::Bool(true)),
                "false" => Ok(Node::Bool(false)),
                _ => VARS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| Node::Var(*v))
                    .ok_or_else(|| {
                        format!(
                            "unknown variable '{name}' (expected requests, totalSuccesses, totalFailures, consecutiveSuccesses or consecutiveFailures)"
                        )
                    }),
            },
            Token::LParen => {
                let node = self.or()?;
                match self.tokens.get(self.pos) {
                    Some(Token::RParen) => {
                        self.pos += 1;
                        Ok(node)
                    }
                    _ => Err("missing ')'".into()),
                }
            }
            t => Err(format!("unexpected {}", describe(&t))),
        }
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Int(i) => format!("number {i}"),
        Token::Ident(s) => format!("'{s}'"),
        Token::Op(o) => format!("'{o}'"),
        Token::LParen => "'('".into(),
        Token::RParen => "')'".into(),
    }
}

fn tokenize(source: &str) -> Result<Vec<Token>, String> {
    const OPS: [&str; 14] = [
        "||", "&&", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%",
    ];
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if b.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let n = source[start..i]
                .parse()
                .map_err(|_| format!("number {} is too large", &source[start..i]))?;
            // `5u` is a CEL unsigned literal; counts compare fine against it as integers.
            if i < bytes.len() && bytes[i] == b'u' {
                i += 1;
            }
            out.push(Token::Int(n));
        } else if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Token::Ident(source[start..i].to_owned()));
        } else if b == b'(' {
            out.push(Token::LParen);
            i += 1;
        } else if b == b')' {
            out.push(Token::RParen);
            i += 1;
        } else {
            let op = OPS
                .iter()
                .find(|op| source[i..].starts_with(**op))
                .ok_or_else(|| {
                    format!(
                        "unexpected character '{}'",
                        source[i..].chars().next().unwrap_or(' ')
                    )
                })?;
            out.push(Token::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, failures: u64, consecutive: u64) -> Counts {
        Counts {
            requests,
            total_successes: requests - failures,
            total_failures: failures,
            consecutive_successes: 0,
            consecutive_failures: consecutive,
        }
    }

    fn trips(expr: &str, c: Counts) -> bool {
        TripExpr::parse(expr).unwrap().eval(&c)
    }

    #[test]
    fn comparisons_and_logic() {
        assert!(!trips("consecutiveFailures > 5", counts(5, 5, 5)));
        assert!(trips("consecutiveFailures > 5", counts(6, 6, 6)));
        assert!(trips("consecutiveFailures >= 5", counts(5, 5, 5)));
        assert!(trips("consecutiveFailures == 2", counts(9, 3, 2)));
        assert!(!trips("consecutiveFailures != 2", counts(9, 3, 2)));
        assert!(trips(
            "requests > 10 && totalFailures * 2 > requests",
            counts(12, 7, 1)
        ));
        assert!(!trips(
            "requests > 10 && totalFailures * 2 > requests",
            counts(12, 6, 1)
        ));
        assert!(trips(
            "totalFailures >= 3 || consecutiveFailures > 1",
            counts(4, 2, 2)
        ));
        assert!(trips("!(requests < 3)", counts(3, 0, 0)));
        assert!(trips(
            "(requests - totalSuccesses) % 2 == 1",
            counts(3, 1, 1)
        ));
        assert!(trips("true", counts(0, 0, 0)));
        assert!(trips("consecutiveFailures > 2u", counts(3, 3, 3)));
        assert!(trips(
            "consecutiveSuccesses == 0 && requests>=-1",
            counts(1, 1, 1)
        ));
    }

    #[test]
    fn errors_and_non_booleans_do_not_trip() {
        assert!(!trips("requests", counts(9, 9, 9)));
        assert!(!trips("requests / 0 > 1", counts(9, 9, 9)));
        assert!(!trips("requests == true", counts(9, 9, 9)));
        // An error on one side of `||` does not hide a true other side (CEL semantics).
        assert!(trips("requests / 0 > 1 || requests > 1", counts(9, 9, 9)));
    }

    #[test]
    fn invalid_expressions_are_refused() {
        for bad in [
            "",
            "consecutiveFailures >",
            "failures > 5",
            "requests > 1 > 0",
            "(requests > 1",
            "requests > 1)",
            "requests # 2",
            "requests > 3 ? true : false",
        ] {
            let err = TripExpr::parse(bad).unwrap_err();
            assert!(err.starts_with("invalid trip expression"), "{bad}: {err}");
        }
    }
}
