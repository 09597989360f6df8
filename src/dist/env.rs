//! Where a process finds its place in a group: torchrun's environment, SLURM's, or the one our own
//! local launcher (`--nproc-per-node`) sets, which is torchrun's.

use super::DistError;

/// Who started the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `RANK`/`WORLD_SIZE`/`LOCAL_RANK` with `MASTER_ADDR`/`MASTER_PORT` (torchrun, or ours).
    Torchrun,
    /// torchrun's elastic agent, which hosts the store itself (`TORCHELASTIC_USE_AGENT_STORE`).
    TorchrunAgent,
    /// `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_LOCALID` with `MASTER_ADDR` (and `MASTER_PORT`).
    Slurm,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::Torchrun => "RANK/WORLD_SIZE from the environment",
            Source::TorchrunAgent => "torchrun's agent store",
            Source::Slurm => "SLURM's task environment",
        }
    }
}

/// One process's rendezvous: its rank, the group's size, and the store everyone meets at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Key prefix inside the store (torchrun's agent store keeps each restart's keys apart).
    pub store_prefix: String,
    /// Rank 0 under our launcher: the store's socket, already listening (`STARGAN_STORE_FD`).
    pub listen_fd: Option<i32>,
    pub source: Source,
}

/// torchrun's default, and SLURM users' habit.
pub const DEFAULT_PORT: u16 = 29500;

impl Rendezvous {
    /// Whether this process hosts the TCPStore: rank 0, unless torchrun's agent already does.
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && self.source != Source::TorchrunAgent
    }

    /// The rendezvous the process environment describes, if any: `RANK` and `WORLD_SIZE` (torchrun
    /// and our launcher) first, then SLURM's task variables. A world of one needs no group and is
    /// `None`. Malformed or inconsistent values are one error line naming the variable.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup (the tests give a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let num = |name: &str| -> Result<Option<usize>, DistError> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| DistError(format!("{name}=`{v}` is not a non-negative integer"))),
            }
        };
        let (rank_var, world_var, local_var, source) = if var("RANK").is_some() || var("WORLD_SIZE").is_some()
        {
            let agent = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            ("RANK", "WORLD_SIZE", "LOCAL_RANK", if agent { Source::TorchrunAgent } else { Source::Torchrun })
        } else if var("SLURM_PROCID").is_some() {
            ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", Source::Slurm)
        } else {
            return Ok(None);
        };
        let need = |name: &str| num(name)?.ok_or_else(|| DistError(format!("{name} is not set")));
        let (rank, world) = (need(rank_var)?, need(world_var)?);
        if world == 0 {
            return Err(DistError(format!("{world_var}=0: a group needs at least one rank")));
        }
        if rank >= world {
            return Err(DistError(format!("{rank_var}={rank} is not below {world_var}={world}")));
        }
        if world == 1 {
            return Ok(None);
        }
        let local_rank = num(local_var)?.unwrap_or(rank);
        let master_addr = var("MASTER_ADDR").filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            DistError(format!(
                "MASTER_ADDR is not set ({} gives {world} ranks; set MASTER_ADDR to rank 0's host{})",
                source.describe(),
                if source == Source::Slurm {
                    ", e.g. $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)"
                } else {
                    ""
                }
            ))
        })?;
        let master_port = match var("MASTER_PORT") {
            None if source == Source::Slurm => DEFAULT_PORT,
            None => return Err(DistError("MASTER_PORT is not set".into())),
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| DistError(format!("MASTER_PORT=`{p}` is not a port (1-65535)")))?,
        };
        let store_prefix = if source == Source::TorchrunAgent {
            // torch.distributed.elastic's rendezvous: each restart's keys under their own prefix.
            format!("/worker/attempt_{}", num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0))
        } else {
            String::new()
        };
        let listen_fd = match source {
            Source::Torchrun if rank == 0 => num("STARGAN_STORE_FD")?.map(|f| f as i32),
            _ => None,
        };
        Ok(Some(Self {
            listen_fd,
            rank,
            world,
            local_rank,
            master_addr: master_addr.trim().into(),
            master_port,
            store_prefix,
            source,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<Rendezvous>, DistError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Rendezvous::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_slurm_and_the_agent_store_are_recognised() {
        assert_eq!(parse(&[]).unwrap(), None);
        let t = parse(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.rank, t.world, t.local_rank, t.master_port, t.source),
            (1, 2, 1, 1234, Source::Torchrun)
        );
        assert!(!t.hosts_store());
        let a = parse(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "4"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.source, a.store_prefix.as_str(), a.hosts_store()),
            (Source::TorchrunAgent, "/worker/attempt_2", false)
        );
        let s = parse(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "0"),
            ("MASTER_ADDR", "n1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.world, s.master_port, s.source, s.hosts_store()),
            (8, DEFAULT_PORT, Source::Slurm, true)
        );
        // One task needs no group (a plain sbatch job).
        assert_eq!(parse(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(), None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = |pairs: &[(&str, &str)]| parse(pairs).unwrap_err().0;
        assert!(e(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("RANK=2 is not below WORLD_SIZE=2"));
        assert!(e(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=`x`"));
        assert!(e(&[("RANK", "0")]).contains("WORLD_SIZE is not set"));
        assert!(e(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR is not set"));
        assert!(e(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")])
            .contains("MASTER_PORT=`70000`"));
        assert!(e(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).contains("scontrol"));
    }
}
