//! Key checks on what the application attaches to a key (external id,
//! metadata) and on the listing filters and count that find keys by them.

use chrono::TimeDelta;

use super::fixtures::*;
use crate::ids::ExternalId;
use crate::key::{KeyRecord, KeyStatus};
use crate::metadata::Metadata;
use crate::store::{KeyStore, ListQuery};

fn xid(s: &str) -> ExternalId {
    ExternalId::new(s).expect("valid external id")
}

async fn must_count<S: KeyStore>(store: &S, q: &ListQuery, check: &str) -> u64 {
    match store.count(q).await {
        Ok(n) => n,
        Err(e) => panic!("{check}: count failed: {e}"),
    }
}

/// Every page of `q` (pages of `size`), concatenated.
async fn all_pages<S: KeyStore>(
    store: &S,
    q: &ListQuery,
    size: usize,
    check: &str,
) -> Vec<KeyRecord> {
    let mut out: Vec<KeyRecord> = Vec::new();
    let mut page = q.clone().limit(size);
    page.after = None;
    loop {
        let got = must_list(store, &page, check).await;
        assert!(got.len() <= size, "{check}: a page longer than its limit");
        let Some(last) = got.last() else { break };
        page.after = Some(last.id.clone());
        out.extend(got);
    }
    out
}

/// The external id and the metadata come back as written by `insert`, are
/// replaced and removed by `update`, and the largest metadata allowed
/// ([`Metadata::MAX_BYTES`]) fits.
pub async fn external_id_and_metadata_roundtrip<S: KeyStore>(store: S) {
    const C: &str = "external_id_and_metadata_roundtrip";
    let o = owner();
    let mut r = record(&o, "live");
    r.external_id = Some(xid("crm:Account/0017"));
    r.metadata = Metadata::parse(r#"{"ticket": 4211, "by": "ops@contoso"}"#).expect("metadata");
    must_insert(&store, &r, None, C).await;
    assert_eq!(
        must_get(&store, &r.id, C).await,
        r,
        "{C}: external id or metadata changed on the way"
    );

    // Replaced: the largest metadata there is, and an external id of the
    // longest length with characters SQL treats specially.
    let mut big = r.clone();
    let filler = "é".repeat((Metadata::MAX_BYTES - 8) / 2);
    big.metadata =
        Metadata::from_value(serde_json::json!({ "x": filler })).expect("metadata at the bound");
    big.external_id = Some(xid(&format!(
        "%_'\"\\{}",
        "x".repeat(ExternalId::MAX_LEN - 5)
    )));
    big.generation = r.generation + 1;
    if let Err(e) = store.update(&big, r.generation).await {
        panic!("{C}: update setting external id and metadata failed: {e}");
    }
    assert_eq!(
        must_get(&store, &r.id, C).await,
        big,
        "{C}: update did not write the external id and metadata"
    );

    // Removed.
    let mut cleared = big.clone();
    cleared.external_id = None;
    cleared.metadata = Metadata::default();
    cleared.generation = big.generation + 1;
    if let Err(e) = store.update(&cleared, big.generation).await {
        panic!("{C}: update clearing external id and metadata failed: {e}");
    }
    let got = must_get(&store, &r.id, C).await;
    assert_eq!(
        got, cleared,
        "{C}: update did not remove the external id and metadata"
    );
    assert!(
        got.metadata.is_empty(),
        "{C}: cleared metadata must read as empty"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// The name-prefix filter is an exact, case-sensitive prefix: `%`, `_`,
/// `\` and `*` in it are plain characters, the empty prefix matches every
/// name, a prefix longer than a name does not match it; paging through a
/// filtered listing returns exactly the filtered set, in id order; `count`
/// agrees.
pub async fn list_filters_name_prefix<S: KeyStore>(store: S) {
    const C: &str = "list_filters_name_prefix";
    let o = owner();
    let names = [
        "50% off",
        "50%",
        "500 off",
        "50_ off",
        "50x off",
        "Deploy prod",
        "deploy prod",
        "DEPLOY",
        "Déploiement",
        "a\\b",
        "aXb",
        "star*",
        "stars",
    ];
    let mut all = Vec::new();
    for name in names {
        // Two keys per name, so paging crosses names.
        for _ in 0..2 {
            let mut r = record(&o, "live");
            r.name = name.into();
            must_insert(&store, &r, None, C).await;
            all.push(r);
        }
    }
    let other = owner();
    let mut foreign = record(&other, "live");
    foreign.name = "50% off".into();
    must_insert(&store, &foreign, None, C).await;
    all.sort_by(|a, b| a.id.cmp(&b.id));

    let cases: &[(&str, &[&str])] = &[
        ("50%", &["50% off", "50%"]),
        ("50_", &["50_ off"]),
        ("50", &["50% off", "50%", "500 off", "50_ off", "50x off"]),
        ("50% off", &["50% off"]),
        ("50% off ", &[]),
        ("Deploy", &["Deploy prod"]),
        ("deploy", &["deploy prod"]),
        ("DEPLOY", &["DEPLOY"]),
        ("Dé", &["Déploiement"]),
        ("De", &["Deploy prod"]),
        ("a\\", &["a\\b"]),
        ("star*", &["star*"]),
        ("%", &[]),
        ("_", &[]),
        ("", &names),
    ];
    for (prefix, expected_names) in cases {
        let expected: Vec<&KeyRecord> = all
            .iter()
            .filter(|r| expected_names.contains(&r.name.as_str()))
            .collect();
        let q = query(&o).name_prefix(*prefix);
        let got = must_list(&store, &q, C).await;
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            expected,
            "{C}: name prefix {prefix:?}"
        );
        let paged = all_pages(&store, &q, 3, C).await;
        assert_eq!(
            paged.iter().collect::<Vec<_>>(),
            expected,
            "{C}: paging by 3 with name prefix {prefix:?}"
        );
        assert_eq!(
            must_count(&store, &q, C).await,
            expected.len() as u64,
            "{C}: count with name prefix {prefix:?}"
        );
    }
    delete_keys_of(&store, &[&o, &other], C).await;
}

/// The external-id filter matches exactly (case-sensitive, not a prefix,
/// `%` and `_` plain), combines with the other filters, pages in id order;
/// keys without an external id never match; `count` agrees.
pub async fn list_filters_external_id<S: KeyStore>(store: S) {
    const C: &str = "list_filters_external_id";
    let o = owner();
    let other = owner();
    let mut keys = Vec::new();
    for (x, env, name) in [
        (Some("job-1"), "live", "ci"),
        (Some("job-1"), "live", "ci successor"),
        (Some("job-1"), "test", "ci"),
        (Some("JOB-1"), "live", "ci"),
        (Some("job-10"), "live", "ci"),
        (Some("job_1"), "live", "ci"),
        (Some("job%"), "live", "ci"),
        (None, "live", "ci"),
    ] {
        let mut r = record(&o, env);
        r.external_id = x.map(xid);
        r.name = name.into();
        must_insert(&store, &r, None, C).await;
        keys.push(r);
    }
    let mut foreign = record(&other, "live");
    foreign.external_id = Some(xid("job-1"));
    must_insert(&store, &foreign, None, C).await;
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    let with = |x: &str| -> Vec<&KeyRecord> {
        keys.iter()
            .filter(|r| r.external_id.as_ref().map(|e| e.as_str()) == Some(x))
            .collect()
    };

    for x in ["job-1", "JOB-1", "job-10", "job_1", "job%", "job", "job-"] {
        let q = query(&o).external_id(xid(x));
        let got = must_list(&store, &q, C).await;
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            with(x),
            "{C}: external id {x:?}"
        );
        assert_eq!(
            must_count(&store, &q, C).await,
            with(x).len() as u64,
            "{C}: count with external id {x:?}"
        );
    }
    let q = query(&o).external_id(xid("job-1"));
    let paged = all_pages(&store, &q, 1, C).await;
    assert_eq!(
        paged.iter().collect::<Vec<_>>(),
        with("job-1"),
        "{C}: paging by 1 with external id"
    );

    // Combined with the environment and the name prefix.
    let q = query(&o)
        .external_id(xid("job-1"))
        .environment(env("live"))
        .name_prefix("ci s");
    let got = must_list(&store, &q, C).await;
    assert_eq!(
        ids(&got),
        keys.iter()
            .filter(|r| r.name == "ci successor")
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        "{C}: external id, environment and name prefix together"
    );
    assert_eq!(must_count(&store, &q, C).await, 1, "{C}: combined count");
    delete_keys_of(&store, &[&o, &other], C).await;
}

/// `count` counts what the filters pass, for the owner only, ignoring
/// `after` and `limit`; status is judged at `query.now`.
pub async fn count_matches_the_filters<S: KeyStore>(store: S) {
    const C: &str = "count_matches_the_filters";
    let o = owner();
    let other = owner();
    assert_eq!(
        must_count(&store, &query(&o), C).await,
        0,
        "{C}: an owner without keys"
    );
    let mut active = Vec::new();
    for _ in 0..5 {
        let r = record(&o, "live");
        must_insert(&store, &r, None, C).await;
        active.push(r);
    }
    let mut expired = record(&o, "live");
    expired.expires_at = Some(t0() - TimeDelta::microseconds(1));
    must_insert(&store, &expired, None, C).await;
    let mut revoked = record(&o, "test");
    revoked.revoked_at = Some(t0() - secs(1));
    must_insert(&store, &revoked, None, C).await;
    must_insert(&store, &record(&other, "live"), None, C).await;
    active.sort_by(|a, b| a.id.cmp(&b.id));

    assert_eq!(must_count(&store, &query(&o), C).await, 7, "{C}: all keys");
    let mut paged = query(&o).limit(2);
    paged.after = Some(active[2].id.clone());
    assert_eq!(
        must_count(&store, &paged, C).await,
        7,
        "{C}: count must ignore after and limit"
    );
    for (status, n) in [
        (KeyStatus::Active, 5),
        (KeyStatus::Expired, 1),
        (KeyStatus::Revoked, 1),
        (KeyStatus::Suspended, 0),
    ] {
        assert_eq!(
            must_count(&store, &query(&o).status(status), C).await,
            n,
            "{C}: status {status:?} at now"
        );
    }
    assert_eq!(
        must_count(&store, &query(&o).environment(env("test")), C).await,
        1,
        "{C}: environment"
    );
    // Judged at `now`: an hour earlier, the expired key was active.
    let mut earlier = query(&o).status(KeyStatus::Active);
    earlier.now = t0() - secs(3_600);
    assert_eq!(
        must_count(&store, &earlier, C).await,
        6,
        "{C}: status judged at query.now"
    );
    delete_keys_of(&store, &[&o, &other], C).await;
}
