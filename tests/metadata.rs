//! KeyManager: external ids and metadata on keys (validated, returned in
//! views and on checks, editable) and finding keys by name prefix and
//! external id, with a total count.

mod common;

use common::*;
use keyward::ids::{ExternalId, InvalidValue};
use keyward::manager::ImportKey;
use keyward::metadata::{Metadata, MetadataError};
use keyward::policy::{PermissionGrant, PolicyError};
use keyward::store::ListQuery;
use keyward::*;
use serde_json::json;

fn push(name: &str) -> NewKey {
    NewKey::new(OWNER, "live", name).permissions(PermissionGrant::only(["package:push"]))
}

fn owner_query() -> ListQuery {
    ListQuery::new(OwnerId::new(OWNER).unwrap())
}

#[tokio::test]
async fn created_keys_carry_external_id_and_metadata_in_views_and_checks() {
    let f = fixture();
    let created = f
        .create(
            push("CI")
                .external_id("pipeline/17")
                .metadata(json!({"team": "build", "ticket": 4211})),
        )
        .await;
    assert_eq!(
        created.key.external_id.as_ref().map(ExternalId::as_str),
        Some("pipeline/17")
    );
    assert_eq!(created.key.metadata.get("ticket"), Some(&json!(4211)));
    let view = f.manager.get(&sys(), &created.key.id).await.unwrap();
    assert_eq!(view, created.key);
    // The view's JSON has both, as plain JSON.
    let v = serde_json::to_value(&view).unwrap();
    assert_eq!(v["external_id"], "pipeline/17");
    assert_eq!(v["metadata"], json!({"team": "build", "ticket": 4211}));

    let checked = f
        .manager
        .verify(created.token.expose_secret(), &f.req())
        .await
        .unwrap();
    assert_eq!(
        checked.external_id().map(ExternalId::as_str),
        Some("pipeline/17")
    );
    assert_eq!(checked.metadata().get("team"), Some(&json!("build")));

    // A key without them: `None` and `{}`.
    let plain = f.create(push("plain")).await;
    assert_eq!(plain.key.external_id, None);
    assert!(plain.key.metadata.is_empty());
    let checked = f
        .manager
        .verify(plain.token.expose_secret(), &f.req())
        .await
        .unwrap();
    assert!(checked.external_id().is_none() && checked.metadata().is_empty());
}

#[tokio::test]
async fn bad_metadata_and_external_ids_are_refused_by_name_and_nothing_is_stored() {
    let f = fixture();
    let megabyte = json!({ "blob": "x".repeat(1 << 20) });
    let mut deep = json!(1);
    for _ in 0..=Metadata::MAX_DEPTH {
        deep = json!([deep]);
    }
    type Expected = fn(&PolicyError) -> bool;
    let cases: Vec<(NewKey, Expected)> = vec![
        (push("a").metadata(megabyte), |e| {
            matches!(e, PolicyError::Metadata(MetadataError::TooLarge { .. }))
        }),
        (push("a").metadata(json!(["not", "an", "object"])), |e| {
            matches!(
                e,
                PolicyError::Metadata(MetadataError::NotObject { found: "an array" })
            )
        }),
        (push("a").metadata(json!("text")), |e| {
            matches!(e, PolicyError::Metadata(MetadataError::NotObject { .. }))
        }),
        (push("a").metadata(json!({ "deep": deep })), |e| {
            matches!(e, PolicyError::Metadata(MetadataError::TooDeep { .. }))
        }),
        (push("a").external_id(""), |e| {
            matches!(
                e,
                PolicyError::Invalid(InvalidValue::Empty {
                    field: "external_id"
                })
            )
        }),
        (push("a").external_id("x".repeat(129)), |e| {
            matches!(
                e,
                PolicyError::Invalid(InvalidValue::TooLong {
                    field: "external_id",
                    ..
                })
            )
        }),
        (push("a").external_id("line\nbreak"), |e| {
            matches!(
                e,
                PolicyError::Invalid(InvalidValue::BadCharacter {
                    field: "external_id",
                    ..
                })
            )
        }),
    ];
    for (new, expected) in cases {
        let err = f.manager.create(&sys(), new).await.unwrap_err();
        let KeywardError::Policy(policy) = &err else {
            panic!("not a policy error: {err:?}");
        };
        assert!(expected(policy), "wrong error: {err:?}");
        let message = err.to_string();
        assert!(
            message.contains("metadata") || message.contains("external_id"),
            "the message names the field: {message}"
        );
    }
    assert!(snapshot(f.manager.store(), OWNER).await.is_empty());

    // Text that is not JSON is refused where text becomes metadata.
    let err = Metadata::parse("{\"a\": 1,}").unwrap_err();
    assert!(matches!(err, MetadataError::NotJson { line: 1, .. }));
    assert_eq!(err.field(), "metadata");
    assert!(matches!(
        Metadata::parse(&format!("{{\"a\":\"{}\"}}", "x".repeat(1 << 20))),
        Err(MetadataError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn edits_set_replace_and_clear_them_and_take_effect_on_the_next_check() {
    let f = fixture();
    let created = f
        .create(push("CI").metadata(json!({"v": 1})).external_id("a"))
        .await;
    let id = &created.key.id;
    let token = created.token.expose_secret();
    assert_eq!(
        f.manager
            .verify(token, &f.req())
            .await
            .unwrap()
            .metadata()
            .get("v"),
        Some(&json!(1))
    );

    let view = f
        .manager
        .edit(
            &sys(),
            id,
            KeyEdit {
                metadata: Some(json!({"v": 2, "owner": "ops"})),
                external_id: Some(Some("b".into())),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(view.metadata.to_value(), json!({"v": 2, "owner": "ops"}));
    assert_eq!(view.external_id.as_ref().map(ExternalId::as_str), Some("b"));
    let checked = f.manager.verify(token, &f.req()).await.unwrap();
    assert_eq!(checked.metadata().get("v"), Some(&json!(2)));
    assert_eq!(checked.external_id().map(ExternalId::as_str), Some("b"));

    // An edit of other fields leaves them alone.
    let view = f
        .manager
        .edit(
            &sys(),
            id,
            KeyEdit {
                name: Some("renamed".into()),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(view.external_id.as_ref().map(ExternalId::as_str), Some("b"));
    assert_eq!(view.metadata.get("owner"), Some(&json!("ops")));

    // A bad edit changes nothing, not even the fields before it.
    let before = snapshot(f.manager.store(), OWNER).await;
    let err = f
        .manager
        .edit(
            &sys(),
            id,
            KeyEdit {
                name: Some("changed?".into()),
                metadata: Some(json!({ "x": "y".repeat(Metadata::MAX_BYTES) })),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        KeywardError::Policy(PolicyError::Metadata(MetadataError::TooLarge { .. }))
    ));
    let err = f
        .manager
        .edit(
            &sys(),
            id,
            KeyEdit {
                external_id: Some(Some(" ".into())),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("external_id"), "{err}");
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);

    // Cleared.
    let view = f
        .manager
        .edit(
            &sys(),
            id,
            KeyEdit {
                metadata: Some(json!({})),
                external_id: Some(None),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert!(view.metadata.is_empty() && view.external_id.is_none());
    let checked = f.manager.verify(token, &f.req()).await.unwrap();
    assert!(checked.metadata().is_empty() && checked.external_id().is_none());
}

#[tokio::test]
async fn rotation_and_import_keep_them() {
    let f = fixture();
    let created = f
        .create(push("CI").metadata(json!({"k": "v"})).external_id("job-9"))
        .await;
    let rotated = f
        .manager
        .rotate(
            &sys(),
            &created.key.id,
            std::time::Duration::from_secs(2 * 24 * 3600),
        )
        .await
        .unwrap();
    assert_eq!(rotated.successor.key.external_id, created.key.external_id);
    assert_eq!(rotated.successor.key.metadata, created.key.metadata);
    // Both share the external id during the grace period: it is not unique.
    let q = owner_query().external_id(ExternalId::new("job-9").unwrap());
    assert_eq!(f.manager.list(&sys(), q.clone()).await.unwrap().len(), 2);
    assert_eq!(f.manager.count(&sys(), &q).await.unwrap(), 2);

    let imported = f
        .manager
        .import(
            &sys(),
            ImportKey::scoped("Imported1", OWNER, "live", "old", sha256_hex("s"))
                .permissions(PermissionGrant::only(["package:push"]))
                .external_id("legacy-7")
                .metadata(json!({"from": "v1"})),
        )
        .await
        .unwrap();
    assert_eq!(
        imported.external_id.as_ref().map(ExternalId::as_str),
        Some("legacy-7")
    );
    assert_eq!(imported.metadata.get("from"), Some(&json!("v1")));
    let err = f
        .manager
        .import(
            &sys(),
            ImportKey::scoped("Imported2", OWNER, "live", "old", sha256_hex("t"))
                .permissions(PermissionGrant::only(["package:push"]))
                .metadata(json!(null)),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        KeywardError::Policy(PolicyError::Metadata(MetadataError::NotObject { .. }))
    ));
}

#[tokio::test]
async fn listing_by_name_prefix_and_external_id_with_a_total() {
    let f = fixture_with(
        std::sync::Arc::new(MemoryStore::new()),
        policy().with_quota(100).unwrap(),
        Default::default(),
    );
    for (name, x) in [
        ("GitHub Actions prod", Some("gh")),
        ("GitHub Actions test", Some("gh")),
        ("github mirror", None),
        ("Jenkins 100%", Some("jk")),
        ("Jenkins 1000", None),
    ] {
        let mut new = push(name);
        if let Some(x) = x {
            new = new.external_id(x);
        }
        f.create(new).await;
    }
    let names = |views: Vec<key::KeyView>| {
        let mut n: Vec<String> = views.into_iter().map(|v| v.name).collect();
        n.sort();
        n
    };
    let q = owner_query().name_prefix("GitHub");
    assert_eq!(
        names(f.manager.list(&sys(), q.clone()).await.unwrap()),
        ["GitHub Actions prod", "GitHub Actions test"]
    );
    assert_eq!(f.manager.count(&sys(), &q).await.unwrap(), 2);
    let q = owner_query().name_prefix("Jenkins 100%");
    assert_eq!(
        names(f.manager.list(&sys(), q.clone()).await.unwrap()),
        ["Jenkins 100%"]
    );
    let q = owner_query().external_id(ExternalId::new("gh").unwrap());
    assert_eq!(f.manager.count(&sys(), &q).await.unwrap(), 2);
    // The total ignores paging.
    let page = owner_query().limit(2);
    assert_eq!(f.manager.list(&sys(), page.clone()).await.unwrap().len(), 2);
    assert_eq!(f.manager.count(&sys(), &page).await.unwrap(), 5);
}
