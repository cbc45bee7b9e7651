//! Files that change under the gateway: caller tokens and the secret key, swapped the way
//! Kubernetes swaps a mounted Secret.

use super::*;

// ---------------------------------------------------------------------------------------------
// Caller authentication and token rotation
// ---------------------------------------------------------------------------------------------

/// Swaps a Kubernetes-style `..data` symlink in `dir` to a new directory `name` holding
/// `file` with `content`, atomically (symlink beside it, then rename over).
fn k8s_swap(dir: &Path, name: &str, file: &str, content: &str) {
    let target = dir.join(name);
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join(file), content).expect("write");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(name, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("rename over ..data");
}

/// `dir/file -> ..data/file`, `..data -> name`, holding `content`.
fn k8s_mount(dir: &Path, name: &str, file: &str, content: &str) -> PathBuf {
    let target = dir.join(name);
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join(file), content).expect("write");
    std::os::unix::fs::symlink(name, dir.join("..data")).expect("symlink ..data");
    let path = dir.join(file);
    std::os::unix::fs::symlink(format!("..data/{file}"), &path).expect("symlink file");
    path
}

async fn assert_unauthorized(addr: SocketAddr, headers: &[(&str, &str)], what: &str) {
    let reply = post_with(addr, GET, r#"{"GroupId":"g"}"#, headers).await;
    assert_eq!(reply.status, 401, "{what}: {:?}", reply.body);
    reply.assert_rejection(401, 60004, "unauthorized");
    assert_eq!(
        reply
            .headers
            .get(http::header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..]),
        "{what}"
    );
}

async fn passes(addr: SocketAddr, token: &str) -> bool {
    let auth = bearer(token);
    let reply = post_with(
        addr,
        GET,
        r#"{"GroupId":"g"}"#,
        &[("authorization", auth.as_str())],
    )
    .await;
    match reply.status.as_u16() {
        200 => {
            assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
            true
        }
        401 => false,
        other => panic!("unexpected {other}: {:?}", reply.body),
    }
}

fn no_authorization_upstream(upstream: &RecordingUpstream) {
    for r in upstream.requests() {
        assert!(
            r.headers.get(http::header::AUTHORIZATION).is_none(),
            "the caller's Authorization reached the upstream"
        );
    }
}

#[tokio::test]
async fn caller_auth_on_and_off_and_token_rotation() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;

    // Off: any or no Authorization passes, and none reaches the upstream.
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    assert!(passes(gw.addr, "anything").await);
    let reply = post_with(gw.addr, GET, r#"{"GroupId":"g"}"#, &[]).await;
    assert_eq!(reply.error_code(), 0);
    drop(gw);

    // On, with a plain file replaced by rename.
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# callers\nold-token-1111\n").expect("write");
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        &format!("[auth]\ntokens_file = {:?}\n", tokens.display().to_string()),
    ))
    .await;
    assert_unauthorized(gw.addr, &[], "no Authorization").await;
    assert_unauthorized(
        gw.addr,
        &[("authorization", "Bearer wrong-token")],
        "wrong token",
    )
    .await;
    assert_unauthorized(
        gw.addr,
        &[("authorization", "Basic old-token-1111")],
        "not a bearer token",
    )
    .await;
    let before = upstream.count();
    assert!(passes(gw.addr, "old-token-1111").await, "the right token");
    assert_eq!(upstream.count(), before + 1);

    let staged = dir.path().join("tokens.new");
    std::fs::write(&staged, "new-token-2222\n").expect("write");
    std::fs::rename(&staged, &tokens).expect("rename");
    let took = eventually(
        Duration::from_secs(5),
        "renamed tokens file in force",
        || async {
            !passes(gw.addr, "old-token-1111").await && passes(gw.addr, "new-token-2222").await
        },
    )
    .await;
    eprintln!("tokens rename in force after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    drop(gw);

    // On, mounted the Kubernetes way; the ..data symlink is swapped.
    let mount = tempfile::tempdir().expect("dir");
    let tokens = k8s_mount(mount.path(), "..2026_01", "tokens", "k8s-token-3333\n");
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        &format!("[auth]\ntokens_file = {:?}\n", tokens.display().to_string()),
    ))
    .await;
    assert!(passes(gw.addr, "k8s-token-3333").await);
    assert!(!passes(gw.addr, "k8s-token-4444").await);
    k8s_swap(mount.path(), "..2026_02", "tokens", "k8s-token-4444\n");
    let took = eventually(
        Duration::from_secs(5),
        "swapped tokens in force",
        || async {
            !passes(gw.addr, "k8s-token-3333").await && passes(gw.addr, "k8s-token-4444").await
        },
    )
    .await;
    eprintln!("tokens ..data swap in force after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    no_authorization_upstream(&upstream);
}

// ---------------------------------------------------------------------------------------------
// Secret key rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn secret_rotation_by_symlink_swap_and_an_empty_key_keeps_the_last_good_one() {
    const NEW_SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let new_key = SecretKey::new(NEW_SECRET).expect("key");
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let mount = tempfile::tempdir().expect("dir");
    let key_path = k8s_mount(mount.path(), "..2026_01", "key", &format!("{SECRET}\n"));
    let config = config_text(&upstream.endpoint(), "", "").replace(
        "secret_key_file = \"/not/read/in/tests\"",
        &format!("secret_key_file = {:?}", key_path.display().to_string()),
    );
    assert!(config.contains(&key_path.display().to_string()));
    let gw = spawn_gateway_with_key(&config, key()).await;

    let last_sig = || {
        let r = upstream.requests().pop().expect("recorded");
        r.query_pairs()
            .into_iter()
            .find(|(k, _)| k == "usersig")
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(&v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .expect("usersig")
    };
    let verifies =
        |k: &SecretKey, sig: &str| usersig::verify(k, sig, SDKAPPID, ADMIN, unix_now()).is_ok();

    let reply = post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
    assert_eq!(reply.error_code(), 0);
    assert!(verifies(&key(), &last_sig()), "signed with the first key");

    k8s_swap(mount.path(), "..2026_02", "key", &format!("{NEW_SECRET}\n"));
    let took = eventually(
        Duration::from_secs(6),
        "signing with the new key",
        || async {
            let reply = post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
            assert_eq!(reply.error_code(), 0);
            verifies(&new_key, &last_sig())
        },
    )
    .await;
    eprintln!("secret rotation: new key in use after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(!verifies(&key(), &last_sig()), "not with the old key");
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(metric(&m, "chat_gateway_secret_key_loaded"), 1.0);

    // An empty key file: the gateway says so and keeps signing with the last good key.
    k8s_swap(mount.path(), "..2026_03", "key", "");
    eventually(
        Duration::from_secs(6),
        "secret_key_loaded drops to 0",
        || async {
            metric(
                &scrape_in_time(gw.admin).await,
                "chat_gateway_secret_key_loaded",
            ) == 0.0
        },
    )
    .await;
    for _ in 0..3 {
        let reply = post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
        assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
        assert!(verifies(&new_key, &last_sig()), "still the last good key");
    }
    assert_eq!(get(gw.admin, "/readyz").await.status, 200, "still ready");
}
