//! `PGCORRAL_HOME_DIR` (a separate test binary: it sets the environment).

mod common;

use common::{mode, TempDir};
use pgcorral_vault::{default_master_key_path, home_dir, MasterKey};

#[test]
fn home_dir_env_and_default() {
    let tmp = TempDir::new("home");
    let dir = tmp.path().join("pgc");
    std::env::set_var("PGCORRAL_HOME_DIR", &dir);
    assert_eq!(home_dir().unwrap(), dir);
    assert_eq!(default_master_key_path().unwrap(), dir.join("master.key"));
    MasterKey::create(&default_master_key_path().unwrap(), "passphrase!").unwrap();
    assert_eq!(mode(&dir), 0o700);
    let key = MasterKey::load_default().unwrap();
    assert_eq!(key.decrypt("u", &key.encrypt("pw")).unwrap(), "pw");

    std::env::remove_var("PGCORRAL_HOME_DIR");
    std::env::set_var("HOME", tmp.path());
    assert_eq!(home_dir().unwrap(), tmp.path().join(".pgcorral"));
}
