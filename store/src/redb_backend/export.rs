//! A backup or export of the redb store: one read transaction written out in the
//! backup format ([`crate::format`]).

use std::io::Write;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use redb::{ReadableTable as _, TableDefinition, TableHandle as _};
use sha2::{Digest as _, Sha256};

use super::{AGENT_BINDINGS, FORMAT, INVITES, INVITES_V1, PAIRINGS, REVOCATIONS, TASKS, TOKENS};
use crate::error::StoreError;
use crate::format::{
    hex, now_ns, End, EndBody, Export, ExportSummary, Hashing, Header, BACKUP_VERSION,
};
use crate::guard::{catch, one_line};
use crate::records::{Counts, VALUE_FORMAT};

/// The redb snapshot of a backup or export: one read transaction.
pub struct Exporter {
    txn: redb::ReadTransaction,
    file: PathBuf,
    secret_check: Vec<u8>,
    seq: u64,
}

impl Exporter {
    pub(crate) fn new(
        txn: redb::ReadTransaction,
        file: PathBuf,
        secret_check: Vec<u8>,
        seq: u64,
    ) -> Exporter {
        Exporter {
            txn,
            file,
            secret_check,
            seq,
        }
    }

    fn table<K: redb::Key + 'static>(
        &self,
        def: TableDefinition<K, &[u8]>,
        h: &mut Hashing<'_>,
    ) -> Result<usize, StoreError> {
        let file = &self.file;
        let io = |e: std::io::Error| StoreError::Io {
            path: PathBuf::from("(backup output)"),
            op: "write the backup to",
            message: e.to_string(),
        };
        let engine = |e: redb::Error| StoreError::Corrupt {
            file: file.clone(),
            problem: one_line(&e.to_string()),
        };
        let name = def.name().to_owned();
        let table = match self.txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(engine(e.into())),
        };
        let prefix = format!("{{\"table\":\"{name}\",\"record\":");
        let mut n = 0;
        for row in table.iter().map_err(|e| engine(e.into()))? {
            let (_, v) = row.map_err(|e| engine(e.into()))?;
            let v = v.value();
            let Some((&VALUE_FORMAT, body)) = v.split_first() else {
                return Err(StoreError::Corrupt {
                    file: file.clone(),
                    problem: format!("table {name}: a record of an unknown format"),
                });
            };
            h.put(&[prefix.as_bytes(), body, b"}\n"]).map_err(io)?;
            n += 1;
        }
        Ok(n)
    }

    fn write_inner(&self, out: &mut dyn Write) -> Result<ExportSummary, StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            path: PathBuf::from("(backup output)"),
            op: "write the backup to",
            message: e.to_string(),
        };
        let header = Header {
            chatixia_store_backup: BACKUP_VERSION,
            format: String::from_utf8_lossy(FORMAT).into_owned(),
            secret_check: STANDARD_NO_PAD.encode(&self.secret_check),
            seq: self.seq,
            written_at_ns: now_ns(),
        };
        let mut h = Hashing {
            out,
            sha: Sha256::new(),
            bytes: 0,
        };
        let line = serde_json::to_vec(&header).unwrap_or_default();
        h.put(&[&line, b"\n"]).map_err(io)?;
        let counts = Counts {
            pairings: self.table(PAIRINGS, &mut h)?,
            device_tokens: self.table(TOKENS, &mut h)?,
            revocations: self.table(REVOCATIONS, &mut h)?,
            invites: self.table(INVITES_V1, &mut h)? + self.table(INVITES, &mut h)?,
            tasks: self.table(TASKS, &mut h)?,
            agent_bindings: self.table(AGENT_BINDINGS, &mut h)?,
        };
        let sha256 = hex(&h.sha.clone().finalize());
        let end = End {
            end: EndBody {
                records: counts.into(),
                total: counts.total() as u64,
                sha256: sha256.clone(),
            },
        };
        let line = serde_json::to_vec(&end).unwrap_or_default();
        h.out.write_all(&line).map_err(io)?;
        h.out.write_all(b"\n").map_err(io)?;
        h.out.flush().map_err(io)?;
        Ok(ExportSummary {
            counts,
            bytes: h.bytes + line.len() as u64 + 1,
            sha256,
            seq: self.seq,
        })
    }
}

impl Export for Exporter {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<ExportSummary, StoreError> {
        let file = self.file.clone();
        catch(|| self.write_inner(out)).unwrap_or_else(|panic| {
            Err(StoreError::Corrupt {
                file,
                problem: panic,
            })
        })
    }
}
