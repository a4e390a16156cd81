//! Shared by the `proxy_*` tests: a recorder of skill creations through a client (testkit's
//! [`History`]: invoked → ok / failed / unknown), a subscriber that keeps every notification,
//! the checks afterwards (every acknowledged creation present once, nothing failed present,
//! notifications dense, in order and without repeats), and a scraper of `/metrics`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_config::{ConfigObject, ObjectType, PageItems, Query};
use tandem_confserv::client::{ConfClient, ConfError, SubscribeFilter, WriteResult};
use tandem_proto::confserv::{self as pb, notification_kind};
use tandem_testkit::client::KeyValue;
use tandem_testkit::{must_eventually, History, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::confserv_common::EVENT_TIMEOUT;

/// Creates skill `name` through `client`, recording the invocation and its outcome; the
/// "revision" of an acknowledged creation is its notification number.
pub async fn create_skill(
    history: &History,
    client: &ConfClient,
    process: &str,
    name: &str,
) -> Result<WriteResult, ConfError> {
    let id = history.invoke(process, name, name.as_bytes());
    let result = client
        .create(&ConfigObject::new(ObjectType::Skill, 0, name, 1), None)
        .await;
    let outcome = match &result {
        Ok(w) => Outcome::Ok { revision: w.last_seq },
        Err(e) if e.is_outcome_unknown() => Outcome::Unknown { reason: e.to_string() },
        Err(e) => Outcome::Fail {
            reason: format!("{}: {e}", e.kind),
        },
    };
    history.complete(id, outcome);
    result
}

/// What a subscriber received: notifications (changes and markers, in order), and the error
/// that ended it, if any.
#[derive(Clone, Default)]
pub struct Seen {
    pub notifications: Arc<Mutex<Vec<pb::Notification>>>,
    pub ended: Arc<Mutex<Option<ConfError>>>,
    /// The server the subscription streamed from last.
    pub server: Arc<Mutex<Option<String>>>,
}

impl Seen {
    /// The changes (no markers).
    pub fn changes(&self) -> Vec<pb::Notification> {
        self.notifications
            .lock()
            .expect("seen")
            .iter()
            .filter(|n| n.kind != notification_kind::LIVE && n.kind != notification_kind::PROXY_MODE)
            .cloned()
            .collect()
    }

    /// The proxy modes announced, in order.
    pub fn proxy_modes(&self) -> Vec<String> {
        self.notifications
            .lock()
            .expect("seen")
            .iter()
            .filter(|n| n.kind == notification_kind::PROXY_MODE)
            .map(|n| n.proxy_mode.clone())
            .collect()
    }

    /// The last number a change or marker covered.
    pub fn last_seq(&self) -> u64 {
        self.notifications
            .lock()
            .expect("seen")
            .iter()
            .map(|n| n.seq)
            .max()
            .unwrap_or(0)
    }

    pub fn server(&self) -> Option<String> {
        self.server.lock().expect("server").clone()
    }

    pub fn ended(&self) -> Option<ConfError> {
        self.ended.lock().expect("ended").clone()
    }
}

/// A subscriber of everything after `after`, on `client`'s servers, until it fails.
pub fn subscribe(client: &ConfClient, after: u64) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Seen::default();
    let mut sub = client.subscribe(SubscribeFilter::default(), Some(after));
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let next = sub.next().await;
                *seen.server.lock().expect("server") = sub.server().map(str::to_owned);
                match next {
                    Ok(n) => seen
                        .notifications
                        .lock()
                        .expect("seen")
                        .push(std::sync::Arc::unwrap_or_clone(n)),
                    Err(e) => {
                        *seen.ended.lock().expect("ended") = Some(e);
                        return;
                    }
                }
            }
        })
    };
    (seen, task)
}

/// Waits until the subscriber has covered `seq`.
pub async fn must_see(seen: &Seen, seq: u64, what: &str) {
    must_eventually(what, EVENT_TIMEOUT, || async {
        if let Some(e) = seen.ended() {
            panic!("the subscription ended: {e}");
        }
        let last = seen.last_seq();
        if last >= seq {
            Ok(())
        } else {
            Err(format!("covered up to {last}"))
        }
    })
    .await
}

/// Asserts the changes are numbered `from + 1 ..= to`, each once, in order.
pub fn assert_dense(changes: &[pb::Notification], from: u64, to: u64) {
    let seqs: Vec<u64> = changes.iter().map(|n| n.seq).collect();
    let expected: Vec<u64> = (from + 1..=to).collect();
    assert_eq!(seqs, expected, "notifications are dense, in order, without repeats");
}

/// The skills the notifications created, as the history checker's final state: one key per
/// name, its version the number of creations seen, its revision the creation's number.
pub fn skills_notified(changes: &[pb::Notification]) -> Vec<KeyValue> {
    let mut found: BTreeMap<String, KeyValue> = BTreeMap::new();
    for n in changes {
        if n.kind != "created" || n.object_type != ObjectType::Skill.name() {
            continue;
        }
        let kv = found.entry(n.name.clone()).or_insert_with(|| KeyValue {
            key: n.name.clone(),
            value: n.name.clone().into_bytes(),
            version: 0,
            create_revision: n.seq,
            mod_revision: n.seq,
        });
        kv.version += 1;
    }
    found.into_values().collect()
}

/// Every skill's name a server holds (each name at most once: names are unique per tenant).
pub async fn skills_held(client: &ConfClient) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut query = Query::new(ObjectType::Skill);
    loop {
        let page = client.query(&query).await.expect("query skills");
        if let PageItems::Full(objects) = page.items {
            all.extend(objects.into_iter().map(|o| o.name));
        }
        match page.next_after_dbid {
            Some(next) => query = query.after(next),
            None => return all,
        }
    }
}

/// Asserts a server holds every acknowledged creation and no failed one.
pub fn assert_held(history: &History, held: &BTreeSet<String>, server: &str) {
    for op in history.snapshot() {
        match &op.outcome {
            Outcome::Ok { .. } => assert!(held.contains(&op.key), "{server} lacks acknowledged {op}"),
            Outcome::Fail { .. } => assert!(!held.contains(&op.key), "{server} holds failed {op}"),
            Outcome::Unknown { .. } | Outcome::Pending => {}
        }
    }
}

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `GET /metrics` at `addr`, or why there is none (the server may be gone).
pub async fn scrape(addr: &str) -> Result<String, String> {
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        socket
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = String::new();
        socket
            .read_to_string(&mut answer)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        Ok::<String, String>(answer)
    };
    let answer = tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {SCRAPE_TIMEOUT:?}"))??;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("refused: {head}"));
    }
    Ok(body.to_owned())
}

/// The value of `series` (a name with its labels, as written: `tandem_confserv_role{role="proxy"}`)
/// in a metrics text.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes `addr` until every `(series, value)` of `expected` holds; returns that text.
pub async fn must_see_metrics(addr: &str, what: &str, expected: &[(&str, u64)]) -> String {
    must_eventually(what, EVENT_TIMEOUT, || async {
        let text = scrape(addr).await?;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, value)| metric(&text, series) != Some(*value))
            .map(|(series, value)| format!("{series} is {:?}, not {value}", metric(&text, series)))
            .collect();
        if wrong.is_empty() {
            Ok(text)
        } else {
            Err(wrong.join("; "))
        }
    })
    .await
}
